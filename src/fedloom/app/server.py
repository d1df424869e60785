"""A deployment server from a run config: the simulation's round loop, remote clients.

:func:`run_server` builds its run with the one build path a simulation takes
(:func:`fedloom.app.build.build_run`: data for evaluation and client counts, the initial model
from the seed, the algorithm, the sampler, the evaluator, the loop), handing it a
:class:`GrpcFleet` of remote clients instead of simulated ones; an asynchronous algorithm
(FedAsync, FedBuff) gets the async loop on the wall clock. It writes the same run directory as a
simulation (``config.yaml``, ``metrics.jsonl``, ``model.safetensors``, ``metrics.png``) plus a
checkpoint after every round (``checkpoint.every``), and tells the clients to exit at the end.

Example:
    >>> # run_server(load_config("configs/fedavg_mnist_2nn_iid.yaml"),
    >>> #            ServerOptions(address="0.0.0.0:8080", tokens="tokens.txt",
    >>> #                          tls=TlsFiles(cert="server.pem", key="server.key")))
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

from fedloom.algorithms.base import Algorithm, is_async
from fedloom.app.build import Run, build_run
from fedloom.app.config import CohortConfig, RunConfig, config_to_yaml
from fedloom.app.experiment import RunResult
from fedloom.app.rundir import close_run_dir, default_out, open_run_dir
from fedloom.compression.uplink import ENCODED
from fedloom.core.errors import ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.core.rng import derive_seed
from fedloom.fleets.base import WrappedFleet
from fedloom.fleets.grpc import GrpcFleet, RoundPolicy
from fedloom.runtime.assemble import FleetRequest
from fedloom.runtime.async_loop import AsyncLoop
from fedloom.runtime.checkpoint import Checkpointer
from fedloom.runtime.loop import ServerLoop
from fedloom.runtime.sampling import ConnectedSampler
from fedloom.runtime.sinks import ConsoleSink, Sink, file_sinks
from fedloom.transport.handlers import Handlers
from fedloom.transport.messages import ReplySchema
from fedloom.transport.security import TlsFiles, TokenBook
from fedloom.transport.service import FederationServer, Limits

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerOptions:
    """How the server serves (the command line's flags; the run itself is the RunConfig).

    Attributes:
        tokens: the tokens file (``CLIENT_ID TOKEN`` per line); None accepts any client id.
        min_clients: clients connected before round 1 starts (None: ``data.num_clients``).
        start_timeout: seconds to wait for them.
        resume: a run directory whose checkpoint to continue from.
        bulk_port: the bulk connection's port (0: any free one; None: none).
        sample_connected: replace sampled clients that are not connected by connected ones
            (:class:`~fedloom.runtime.sampling.ConnectedSampler`); False: wait
            ``absent_timeout`` for them, then count them as failures. ``substitute_after``:
            seconds a sampled client that is not connected is waited for before it is
            replaced (one reconnecting right then keeps its place: the cohort stays the
            seed's, and a resumed run stays exact).
        max_examples: the most examples a client may claim for a result: "registered" (the
            count the server's copy of the partition gives each client: fedloom's own clients
            train on exactly that), a number for every client, or None (no bound: clients
            with data of their own the server does not know).
        initial_parameters: "server": the run's seeded model; "client": the model of one
            connected client, picked by the seed (Flower's ``get_parameters`` when a strategy
            has no ``initial_parameters``); not on ``resume``.
    """

    address: str = "127.0.0.1:8080"
    tls: TlsFiles | None = None
    insecure: bool = False
    tokens: str | None = None
    min_clients: int | None = None
    start_timeout: float = 600.0
    policy: RoundPolicy = field(default_factory=RoundPolicy)
    limits: Limits = field(default_factory=Limits)
    resume: str | None = None
    console: bool = True
    handlers: Handlers | None = None
    bulk_port: int | None = 0
    sample_connected: bool = True
    initial_parameters: Literal["server", "client"] = "server"
    max_examples: int | Literal["registered"] | None = "registered"
    substitute_after: float = 5.0

    def check(self) -> None:
        if self.initial_parameters not in ("server", "client"):
            raise ConfigError(f"initial_parameters = {self.initial_parameters!r}: use 'server' "
                              "or 'client'")
        if self.insecure:
            return
        if self.tls is None or self.tls.cert is None or self.tls.key is None:
            raise ConfigError("refusing to start without TLS: give --cert and --key (make them "
                              "with `fedloom certs DIR`), or --insecure for a loopback demo")
        if self.tokens is None and self.tls.ca is None:
            raise ConfigError("refusing to start without client authentication: give --tokens "
                              "FILE and/or --client-ca (mutual TLS), or --insecure")


def reply_schema(algorithm: Algorithm, layout: ParamLayout) -> ReplySchema:
    """What the algorithm reads from a fit reply beyond the parameters (its declared
    :class:`~fedloom.algorithms.base.ResultNeeds`)."""
    needs = algorithm.result_needs(layout)
    return ReplySchema(extras=dict(needs.extras), metrics=needs.metrics,
                       encoded=any(k.startswith(ENCODED) for k in needs.extras))


@dataclass(slots=True, kw_only=True)
class Deployment:
    """A built server: the gRPC side, the fleet and the loop that drives them."""

    cfg: RunConfig
    server: FederationServer
    fleet: GrpcFleet
    loop: Run
    out: Path
    sinks: list[Sink]


DEPLOY_RETRIES = 10


def deployment_cohort(cohort: CohortConfig) -> CohortConfig:
    """A deployment's cohort settings: no simulated dropout; unless set, a round needs half
    its cohort (rounded up) and is retried up to :data:`DEPLOY_RETRIES` times."""
    return dataclasses.replace(
        cohort, dropout=0.0,
        min_success=(cohort.min_success if cohort.min_success is not None
                     else (cohort.size + 1) // 2),
        retries=cohort.retries if cohort.retries is not None else DEPLOY_RETRIES)


def example_bound(options: ServerOptions, cfg: RunConfig,
                  request: FleetRequest) -> int | Mapping[int, int] | None:
    """The policy's bound on claimed example counts (see ``ServerOptions.max_examples``); a
    hierarchy's root serves aggregators, whose counts it does not register."""
    if options.policy.max_examples is not None:
        return options.policy.max_examples
    if options.max_examples != "registered":
        return options.max_examples
    if cfg.topology is not None:
        return None
    return {cid: int(idx.numel()) for cid, idx in enumerate(request.spec.client_indices)}


def wait_to_retry(fleet: GrpcFleet, cohort: CohortConfig, timeout: float, round: int,
                  attempt: int) -> None:
    """Before a retried round: wait (up to ``timeout``) until enough clients are connected
    for it to succeed; a TransportError ends the run when they do not come."""
    needed = cohort.min_success or cohort.size
    if len(fleet.server.connected()) < needed:
        log.warning("round %d: waiting up to %g s for %d connected clients before attempt %d",
                    round, timeout, needed, attempt + 1)
        fleet.wait_for_clients(needed, timeout)


def build_deployment(cfg: RunConfig, options: ServerOptions) -> Deployment:
    """Everything a server run needs, listening already; nothing has run yet."""
    options.check()
    if cfg.cohort.dropout or cfg.client.straggler_fraction:
        log.warning("cohort.dropout and client.straggler_fraction simulate heterogeneity; a "
                    "deployment has real clients and ignores them")
    real = dataclasses.replace(
        cfg, client=dataclasses.replace(cfg.client, straggler_fraction=0.0),
        cohort=deployment_cohort(cfg.cohort))
    tokens = TokenBook.from_file(options.tokens) if options.tokens else None
    out = Path(options.resume) if options.resume else (Path(cfg.out) if cfg.out
                                                       else default_out(cfg.name))

    def grpc_fleet(request: FleetRequest) -> GrpcFleet:
        algorithm, layout = request.algorithm, request.layout
        server = FederationServer(
            options.address, layout=layout, tls=options.tls, insecure=options.insecure,
            tokens=tokens, client_ids=request.client_ids,
            schema=reply_schema(algorithm, layout), run_config=config_to_yaml(cfg),
            mode="async" if is_async(algorithm) else "sync", limits=options.limits,
            handlers=options.handlers, bulk_port=options.bulk_port)
        return GrpcFleet(server, dataclasses.replace(
            options.policy, max_examples=example_bound(options, cfg, request)))

    run = build_run(real, fleet=grpc_fleet, remote=True,
                    checkpointer=Checkpointer(out, every=max(1, cfg.checkpoint.every)),
                    task_timeout=options.policy.round_timeout,
                    idle_timeout=options.start_timeout)
    fleet = run.fleet
    while isinstance(fleet, WrappedFleet):  # SecAgg's, the decoder, an attack
        fleet = fleet.inner
    assert isinstance(fleet, GrpcFleet)  # the one grpc_fleet built (under its wrappers)
    if isinstance(run, ServerLoop) and options.sample_connected:
        run.sampler = ConnectedSampler(run.sampler, available=fleet.server.connected,
                                       seed=cfg.seed, grace=options.substitute_after)
    if isinstance(run, ServerLoop):
        run.on_retry = partial(wait_to_retry, fleet, real.cohort, options.start_timeout)
    open_run_dir(run, cfg, out=out, resume=options.resume is not None)
    sinks: list[Sink] = file_sinks(out, cfg.sinks, resumed_after=run.state.round)
    if options.console:
        sinks.append(ConsoleSink(cfg.rounds, title=cfg.name, done=run.state.round))
    run.sinks.extend(sinks)
    fleet.server.start()
    return Deployment(cfg=cfg, server=fleet.server, fleet=fleet, loop=run, out=out, sinks=sinks)


def start_from_a_client(dep: Deployment, seed: int) -> None:
    """Replace the initial model by a connected client's (picked by ``seed``)."""
    loop = dep.loop
    if not isinstance(loop, ServerLoop | AsyncLoop):
        raise ConfigError("initial_parameters='client' needs a flat run (a hierarchy's root "
                          "starts from its own model)")
    connected = sorted(dep.server.connected())
    if not connected:
        raise ConfigError("initial_parameters='client': no client is connected to ask")
    client_id = connected[derive_seed(seed, 0, 0, "initial_parameters") % len(connected)]
    params = dep.fleet.initial_parameters(client_id)
    log.info("initial model from client %d", client_id)
    loop.state = loop.algorithm.init(params)


def run_server(cfg: RunConfig, options: ServerOptions) -> RunResult:
    """Serve the run ``cfg`` describes to remote clients, end to end; returns its history."""
    dep = build_deployment(cfg, options)
    loop = dep.loop
    try:
        ids = dep.server.client_ids  # a hierarchy's root serves its aggregators
        wanted = options.min_clients or (len(ids) if ids is not None else cfg.data.num_clients)
        log.info("waiting for %d clients on port %d", wanted, dep.server.port)
        dep.fleet.wait_for_clients(wanted, options.start_timeout)
        if options.initial_parameters == "client" and options.resume is None:
            start_from_a_client(dep, cfg.seed)
        history = loop.run()
    finally:
        dep.fleet.close()
        for sink in dep.sinks:
            sink.close()
        close_run_dir(dep.out, loop.layout, loop.state, cfg.name)
        dep.server.stop()
    return RunResult(history=history, out=dep.out)
