"""A deployment server from a run config: the simulation's round loop, remote clients.

:func:`run_server` builds exactly what :func:`fedloom.app.experiment.build_simulation` builds
(data for evaluation and client counts, the initial model from the seed, the algorithm, the
sampler, the evaluator) but hands the :class:`~fedloom.runtime.loop.ServerLoop` a
:class:`GrpcFleet`; an asynchronous algorithm (FedAsync, FedBuff) gets the
:class:`AsyncServerLoop`. It writes the same run directory as a simulation (``config.yaml``,
``metrics.jsonl``, ``model.safetensors``, ``metrics.png``) plus a checkpoint after every round,
and tells the clients to exit at the end.

Example:
    >>> # run_server(load_config("configs/fedavg_mnist_2nn_iid.yaml"),
    >>> #            ServerOptions(address="0.0.0.0:8080", tokens="tokens.txt",
    >>> #                          tls=TlsFiles(cert="server.pem", key="server.key")))
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedloom.algorithms import AlgorithmContext, build_algorithm
from fedloom.algorithms.asynchronous import AsyncAlgorithm
from fedloom.algorithms.base import Algorithm, result_needs
from fedloom.algorithms.client_store import ClientStateStore, make_store
from fedloom.app.config import RunConfig, config_to_yaml, load_config
from fedloom.app.experiment import RunResult
from fedloom.app.rundir import close_run_dir, default_out, prepare_out
from fedloom.core.errors import ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean
from fedloom.core.packages import ServerState
from fedloom.data import load_federated
from fedloom.fleets.grpc import GrpcFleet, RoundPolicy
from fedloom.models import init_module, model_factory
from fedloom.runtime.async_loop import AsyncServerLoop
from fedloom.runtime.checkpoint import (
    Checkpoint,
    load_checkpoint,
    restore_store,
    rows_up_to,
    save_checkpoint,
    store_contents,
)
from fedloom.runtime.loop import ServerLoop
from fedloom.runtime.sampling import ConnectedSampler, Sampler, make_sampler
from fedloom.runtime.sinks import ConsoleSink, JsonlSink, Row, Sink
from fedloom.training.evaluation import CentralEvaluator, RoundEvaluator
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
            ``absent_timeout`` for them, then count them as failures.
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

    def check(self) -> None:
        if self.insecure:
            return
        if self.tls is None or self.tls.cert is None or self.tls.key is None:
            raise ConfigError("refusing to start without TLS: give --cert and --key (make them "
                              "with `fedloom certs DIR`), or --insecure for a loopback demo")
        if self.tokens is None and self.tls.ca is None:
            raise ConfigError("refusing to start without client authentication: give --tokens "
                              "FILE and/or --client-ca (mutual TLS), or --insecure")


def reply_schema(algorithm: Algorithm | AsyncAlgorithm, layout: ParamLayout) -> ReplySchema:
    """What the algorithm's aggregate reads from a fit reply beyond the parameters (its
    declared :class:`~fedloom.algorithms.base.ResultNeeds`)."""
    needs = result_needs(algorithm, layout)
    return ReplySchema(extras=dict(needs.extras), metrics=needs.metrics)


class Checkpointer:
    """A sink that writes the checkpoint before the row reaches the other sinks."""

    def __init__(self, out: Path, *, state: Callable[[], ServerState], store: ClientStateStore,
                 algorithm: object, rows: list[Row], info: Callable[[], dict[str, Any]]) -> None:
        self.out, self.state, self.store = out, state, store
        self.algorithm, self.rows, self.info = algorithm, rows, info

    def log(self, row: Row) -> None:
        self.rows.append(row)
        buffer = tuple(getattr(self.algorithm, "_buffer", ()))  # FedBuff's pending deltas
        save_checkpoint(self.out, Checkpoint(state=self.state(), store=store_contents(self.store),
                                             buffer=buffer, rows=tuple(self.rows),
                                             info=self.info()))

    def close(self) -> None:
        pass


@dataclass(slots=True, kw_only=True)
class Deployment:
    """A built server: the gRPC side, the fleet and the loop that drives them."""

    cfg: RunConfig
    server: FederationServer
    fleet: GrpcFleet
    loop: ServerLoop | AsyncServerLoop
    out: Path
    sinks: list[Sink]


def _out_dir(cfg: RunConfig, options: ServerOptions) -> tuple[Path, Checkpoint | None]:
    if options.resume is None:
        out = prepare_out(Path(cfg.out) if cfg.out else default_out(cfg.name))
        (out / "config.yaml").write_text(config_to_yaml(cfg), encoding="utf-8")
        return out, None
    out = Path(options.resume)
    saved = load_config(out / "config.yaml")
    if config_to_yaml(dataclasses.replace(saved, out=None)) != config_to_yaml(
            dataclasses.replace(cfg, out=None)):
        raise ConfigError(f"--resume {out}: the config given differs from the run's "
                          f"{out / 'config.yaml'} (resume with the same config, or none)")
    ckpt = load_checkpoint(out)
    rows = rows_up_to(ckpt.rows, ckpt.state.round)
    tmp = out / "metrics.jsonl.tmp"
    tmp.unlink(missing_ok=True)
    sink = JsonlSink(tmp)
    for row in rows:
        sink.log(row)
    sink.close()
    tmp.replace(out / "metrics.jsonl")
    return out, ckpt


def build_deployment(cfg: RunConfig, options: ServerOptions) -> Deployment:
    """Everything a server run needs, listening already; nothing has run yet."""
    options.check()
    if cfg.cohort.dropout or cfg.client.straggler_fraction:
        log.warning("cohort.dropout and client.straggler_fraction simulate heterogeneity; a "
                    "deployment has real clients and ignores them")
    tokens = TokenBook.from_file(options.tokens) if options.tokens else None
    data = load_federated(cfg.data, seed=cfg.seed)
    model_fn = model_factory(cfg.model, data.input_shape, data.num_classes)
    model = init_module(model_fn, cfg.seed)
    layout = ParamLayout.from_module(model)
    num_examples = tuple(data.num_examples(c) for c in range(data.num_clients))
    store = make_store(cfg.state_dir, data.num_clients)
    algorithm = build_algorithm(cfg.algorithm.name, cfg.algorithm.options, AlgorithmContext(
        num_examples=num_examples, num_trainable=layout.num_trainable, store=store))
    is_async = isinstance(algorithm, AsyncAlgorithm)
    out, ckpt = _out_dir(cfg, options)
    server = FederationServer(
        options.address, layout=layout, tls=options.tls, insecure=options.insecure,
        tokens=tokens, client_ids=range(data.num_clients),
        schema=reply_schema(algorithm, layout), run_config=config_to_yaml(cfg),
        mode="async" if is_async else "sync", limits=options.limits, handlers=options.handlers,
        bulk_port=options.bulk_port)
    fleet = GrpcFleet(server, options.policy)
    evaluator = CentralEvaluator(model_fn=model_fn, test=data.test,
                                 batch_size=cfg.eval.batch_size)

    def central(params: torch.Tensor) -> dict[str, Mean]:
        spread = fleet.evaluate(params)
        return evaluator(params) if spread is None else spread

    evaluate = RoundEvaluator(central=central, model_fn=model_fn, data=data,
                              batch_size=cfg.eval.batch_size, train=cfg.eval.train,
                              federated=cfg.eval.federated,
                              personal=getattr(algorithm, "personal_params", None))
    rows: list[Row] = [] if ckpt is None else rows_up_to(ckpt.rows, ckpt.state.round)
    client = dataclasses.replace(cfg.client, straggler_fraction=0.0)
    initial = layout.module_to_flat(model)
    loop: ServerLoop | AsyncServerLoop
    if isinstance(algorithm, AsyncAlgorithm):
        loop = AsyncServerLoop(
            algorithm=algorithm, fleet=fleet, client=client, versions=cfg.rounds, layout=layout,
            initial_params=initial, evaluate=evaluate, seed=cfg.seed, eval_every=cfg.eval.every,
            concurrency=cfg.clock.concurrency, task_timeout=options.policy.round_timeout,
            idle_timeout=options.start_timeout, threads=cfg.fleet.threads)
    else:
        sampler: Sampler = make_sampler(cfg.cohort.sampler, num_examples=num_examples,
                               size=cfg.cohort.size, seed=cfg.seed)
        if options.sample_connected:
            sampler = ConnectedSampler(sampler, available=server.connected, seed=cfg.seed)
        loop = ServerLoop(
            algorithm=algorithm, fleet=fleet, client=client, rounds=cfg.rounds, layout=layout,
            sampler=sampler,
            evaluate=evaluate, initial_params=initial, seed=cfg.seed,
            min_success=cfg.cohort.min_success, eval_every=cfg.eval.every,
            threads=cfg.fleet.threads)
    if ckpt is not None:
        _restore(loop, algorithm, store, ckpt)
    info = (lambda: {"starts": loop.starts}) if isinstance(loop, AsyncServerLoop) else dict
    sinks: list[Sink] = [Checkpointer(out, state=lambda: loop.state, store=store,
                                      algorithm=algorithm, rows=rows, info=info),
                         JsonlSink(out / "metrics.jsonl")]
    if options.console:
        sinks.append(ConsoleSink(cfg.rounds, title=cfg.name))
    loop.sinks.extend(sinks)
    server.start()
    return Deployment(cfg=cfg, server=server, fleet=fleet, loop=loop, out=out, sinks=sinks)


def _restore(loop: ServerLoop | AsyncServerLoop, algorithm: object, store: ClientStateStore,
             ckpt: Checkpoint) -> None:
    state = ckpt.state
    if state.params.shape != loop.state.params.shape:
        raise ConfigError(f"the checkpoint's model has {state.params.numel()} values, this "
                          f"config's {loop.state.params.numel()}")
    loop.state = state
    restore_store(store, ckpt.store)
    if hasattr(algorithm, "_buffer"):
        algorithm._buffer = [t.clone() for t in ckpt.buffer]
    if isinstance(loop, AsyncServerLoop):
        loop.starts = int(ckpt.info.get("starts", 0))
    log.info("resuming after round %d", state.round)


def run_server(cfg: RunConfig, options: ServerOptions) -> RunResult:
    """Serve the run ``cfg`` describes to remote clients, end to end; returns its history."""
    dep = build_deployment(cfg, options)
    loop = dep.loop
    try:
        wanted = options.min_clients or cfg.data.num_clients
        log.info("waiting for %d clients on port %d", wanted, dep.server.port)
        dep.fleet.wait_for_clients(wanted, options.start_timeout)
        history = loop.run()
    finally:
        dep.fleet.close()
        for sink in dep.sinks:
            sink.close()
        close_run_dir(dep.out, loop.layout, loop.state, cfg.name)
        dep.server.stop()
    return RunResult(history=history, out=dep.out)
