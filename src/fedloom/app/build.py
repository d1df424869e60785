"""The one build path: a resolved config (plus, optionally, a fleet) -> a runnable loop.

``fedloom run`` (simulations, synchronous and asynchronous), a torchrun job (every rank builds
the same run; the distributed fleet makes ranks other than 0 serve) and ``fedloom server`` (a
fleet of remote clients) all call :func:`build_run`. It loads the data, builds the model and
the algorithm the config names, assembles the chain (:func:`fedloom.runtime.assemble.assemble`)
and puts the loop around it: :class:`~fedloom.runtime.loop.ServerLoop` for synchronous
algorithms, :class:`~fedloom.runtime.async_loop.AsyncLoop` for asynchronous ones, on the fleet's
own clock when it has one (remote clients) and on a simulated clock otherwise.

Example:
    >>> loop = build_run(load_config("configs/default.yaml", ["rounds=2"]))  # doctest: +SKIP
    >>> loop.run().series("test_accuracy")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses

from fedloom.aggregators.rules import build_rule
from fedloom.algorithms.base import is_async
from fedloom.algorithms.client_store import make_store
from fedloom.algorithms.combined import Combined
from fedloom.algorithms.registry import AlgorithmContext, build_algorithm
from fedloom.app.config import RunConfig
from fedloom.app.topologies import build_topology
from fedloom.attacks import plan_attack
from fedloom.compression.config import DownlinkCoding
from fedloom.compression.downlink import Downlinked
from fedloom.compression.uplink import Compressed, CompressedSizes, compress
from fedloom.core.errors import ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.data import load_federated
from fedloom.fleets.base import AsyncFleet, FleetBase, serve_as_worker
from fedloom.fleets.decoding import DecodingFleet
from fedloom.fleets.secagg_setup import check_secagg_algorithm, secure_fleet
from fedloom.models import model_factory
from fedloom.privacy.private import privatize
from fedloom.runtime.assemble import FleetChoice, Parts, assemble
from fedloom.runtime.async_loop import AsyncLoop
from fedloom.runtime.checkpoint import Checkpointer
from fedloom.runtime.clock import ClientClock
from fedloom.runtime.loop import EvaluateFn, ServerLoop
from fedloom.runtime.sampling import make_sampler
from fedloom.runtime.simulation import simulated
from fedloom.topology.gossip import GossipLoop
from fedloom.topology.hierarchy import HierarchicalLoop

Run = ServerLoop | AsyncLoop | HierarchicalLoop | GossipLoop


def build_run(cfg: RunConfig, *, fleet: FleetChoice | None = None, remote: bool = False,
              checkpointer: Checkpointer | None = None,
              task_timeout: float | None = None, idle_timeout: float = 600.0) -> Run:
    """Everything ``cfg`` names, built and ready to ``run()``; nothing has run yet.

    Args:
        fleet: where clients run (default: ``cfg.fleet``); a factory gets the clients' spec,
            the layout and the algorithm (a deployment builds its gRPC server from them).
        remote: the fleet's collaborators are other processes keeping their own time (a
            deployment): no simulated clock; a hierarchy's root serves its aggregators.
        checkpointer: writes the run's checkpoint every so many rounds.
        task_timeout: asynchronous runs: seconds a task may take on the fleet's clock before
            it is given up (None: never).
        idle_timeout: asynchronous runs: wall seconds with no client reachable before the run
            stops.
    """
    data = load_federated(cfg.data, seed=cfg.seed)
    attack = plan_attack(cfg.attack, seed=cfg.seed, num_clients=data.num_clients, remote=remote)
    if attack is not None:  # data attacks: the malicious clients train on poisoned copies
        data = attack.poison(data)
    if cfg.cohort.size > data.num_clients:
        raise ConfigError(f"cohort.size = {cfg.cohort.size}: the data has only "
                          f"{data.num_clients} clients")
    model_fn = model_factory(cfg.model, data.input_shape, data.num_classes)
    num_examples = data.example_counts()
    layout = ParamLayout.from_module(model_fn())
    if cfg.topology is not None:
        return build_topology(cfg, data=data, model_fn=model_fn, layout=layout,
                              fleet=fleet, remote=remote, checkpointer=checkpointer)
    store = make_store(cfg.state_dir, data.num_clients)
    algorithm = build_algorithm(cfg.algorithm.name, cfg.algorithm.options, AlgorithmContext(
        num_examples=num_examples, layout=layout, store=store))
    rule = build_rule(cfg.aggregator)  # robust aggregation replaces the algorithm's mean
    if rule is not None:
        algorithm = Combined(algorithm, rule)
    private = None
    if cfg.privacy is not None:  # after the rule: config refuses central DP with a robust one
        algorithm = private = privatize(algorithm, cfg.privacy, seed=cfg.seed,
                                        cohort_size=cfg.cohort.size, num_examples=num_examples,
                                        client=cfg.client)
    if cfg.compression.downlink is not DownlinkCoding.NONE:  # what clients receive
        algorithm = Downlinked(algorithm, cfg.compression.downlink, seed=cfg.seed,
                               history=cfg.compression.history, block=cfg.compression.block)
    if cfg.compression.enabled:  # after DP's clip and noise: the codec post-processes
        algorithm = compress(algorithm, cfg.compression, seed=cfg.seed, store=store,
                             clients_keep_state=remote, layout=layout)
    if cfg.secagg.enabled:
        check_secagg_algorithm(algorithm)
    parts = assemble(data=data, model_fn=model_fn, algorithm=algorithm, seed=cfg.seed,
                     fleet=cfg.fleet if fleet is None else fleet, evaluation=cfg.eval,
                     reducible=None if attack is None else False)
    if isinstance(algorithm, Compressed) and not cfg.secagg.enabled:
        # the server side decodes what clients send (under SecAgg the ring carries it)
        variate = None if algorithm.variate is None else (algorithm.variate[0],
                                                          algorithm.variate[2])
        parts = dataclasses.replace(parts, fleet=DecodingFleet(parts.fleet, algorithm.codec,
                                                               variate))
    evaluate: EvaluateFn = parts.evaluate
    if attack is not None:  # update attacks rewrite the malicious clients' results
        if is_async(algorithm):
            raise ConfigError(f"attack.name = {cfg.attack.name.value!r}: attacks need a "
                              f"synchronous round; {algorithm.name} is asynchronous")
        parts = dataclasses.replace(parts, fleet=attack.fleet(parts.fleet))
        evaluate = attack.evaluate(evaluate, model_fn=model_fn, data=data,
                                   batch_size=parts.spec.eval_batch_size)
    background = _background_evaluate(cfg, parts, remote=remote)
    if background is not None and attack is not None:
        background = attack.evaluate(background, model_fn=model_fn, data=data,
                                     batch_size=parts.spec.eval_batch_size)
    if cfg.secagg.enabled:  # the server learns only the sum of the cohort's updates
        parts = dataclasses.replace(parts, fleet=secure_fleet(parts.fleet, cfg.secagg,
                                                               seed=cfg.seed))
    # remote clients keep their own time; simulated ones run on the configured clock
    timed = parts.fleet if remote and isinstance(parts.fleet, AsyncFleet) else None
    if is_async(algorithm):
        clocked = timed or simulated(parts.fleet, cfg.clock, data, cfg.seed)
        return AsyncLoop(
            algorithm=algorithm, fleet=clocked, client=cfg.client, versions=cfg.rounds,
            layout=parts.layout, initial_params=parts.initial_params, evaluate=parts.evaluate,
            seed=cfg.seed, eval_every=cfg.eval.every,
            concurrency=min(cfg.clock.concurrency, data.num_clients), task_timeout=task_timeout,
            idle_timeout=idle_timeout, threads=cfg.fleet.threads, store=store,
            checkpointer=checkpointer, selector=cfg.clock.selector,
            num_clients=data.num_clients)
    return ServerLoop(
        algorithm=algorithm, fleet=parts.fleet,
        sampler=make_sampler(cfg.cohort.sampler, num_examples=num_examples,
                             size=cfg.cohort.size, seed=cfg.seed),
        evaluate=evaluate, client=cfg.client, rounds=cfg.rounds, layout=parts.layout,
        initial_params=parts.initial_params, seed=cfg.seed, min_success=cfg.cohort.min_success,
        retries=cfg.cohort.retries or 0,
        dropout=cfg.cohort.dropout, eval_every=cfg.eval.every, threads=cfg.fleet.threads,
        clock=None if timed is not None else ClientClock(cfg.clock, num_clients=data.num_clients,
                                                         seed=cfg.seed),
        losses=parts.losses, store=store, checkpointer=checkpointer,
        stop_before=private.stop_reason if private is not None else None,
        sizes=CompressedSizes() if isinstance(algorithm, Compressed | Downlinked) else None,
        background_evaluate=None if is_async(algorithm) else background)


def _background_evaluate(cfg: RunConfig, parts: Parts, *, remote: bool) -> EvaluateFn | None:
    """The server-side evaluation a round may run while the next trains (``eval.overlap``),
    or None: it never uses the fleet, which is busy training then."""
    clients_evaluate = isinstance(parts.fleet, FleetBase) and parts.fleet.evaluates_on_clients
    overlap = cfg.eval.overlap
    if overlap is None:
        overlap = remote and not clients_evaluate and not parts.evaluate.reads_client_state
    if not overlap:
        return None
    if parts.evaluate.reads_client_state:
        raise ConfigError("eval.overlap = true: the federated evaluation of personal models "
                          "reads client state the next round changes; set eval.overlap=false "
                          "or eval.federated=false")
    if clients_evaluate:
        raise ConfigError("eval.overlap = true: this deployment's clients evaluate the model "
                          "(--evaluate-on-clients), and they are busy training the next round")
    return parts.evaluate.with_central(parts.central)


def serve_worker(run: Run) -> None:
    """On a process that serves another's fleet (a torchrun rank other than 0): answer it
    until it says stop, under the run's torch thread count."""
    serve_as_worker(run.fleet, run.threads)  # what run.run() does on such a process
