"""From a :class:`RunConfig` to a finished run directory.

A run directory holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON object per
round, the source of truth), ``model.safetensors`` (the final global model) and ``metrics.png``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from fedloom.algorithms import AlgorithmContext, build_algorithm
from fedloom.algorithms.asynchronous import AsyncAlgorithm
from fedloom.algorithms.client_store import make_store
from fedloom.app.config import RunConfig, config_to_yaml
from fedloom.app.rundir import close_run_dir, default_out, prepare_out
from fedloom.core.errors import ConfigError
from fedloom.data import load_federated
from fedloom.models import model_factory
from fedloom.runtime.async_sim import AsyncSimulation
from fedloom.runtime.sampling import make_sampler
from fedloom.runtime.simulation import History, Simulation, is_worker
from fedloom.runtime.sinks import ConsoleSink, JsonlSink, Sink

log = logging.getLogger(__name__)


def build_simulation(cfg: RunConfig, *,
                     sinks: list[Sink] | None = None) -> Simulation | AsyncSimulation:
    """Load the data and build every component the config names (an asynchronous algorithm
    gets the async runner, with ``rounds`` global model versions)."""
    data = load_federated(cfg.data, seed=cfg.seed)
    if cfg.cohort.size > data.num_clients:
        raise ConfigError(f"cohort.size = {cfg.cohort.size}: the data has only "
                          f"{data.num_clients} clients")
    model_fn = model_factory(cfg.model, data.input_shape, data.num_classes)
    num_examples = data.example_counts()
    context = AlgorithmContext(
        num_examples=num_examples,
        num_trainable=sum(p.numel() for p in model_fn().parameters()),
        store=make_store(cfg.state_dir, data.num_clients))
    algorithm = build_algorithm(cfg.algorithm.name, cfg.algorithm.options, context)
    if isinstance(algorithm, AsyncAlgorithm):
        return AsyncSimulation(
            data=data, model_fn=model_fn, algorithm=algorithm, client=cfg.client,
            versions=cfg.rounds, clock=cfg.clock, seed=cfg.seed, fleet=cfg.fleet,
            eval_every=cfg.eval.every, eval_batch_size=cfg.eval.batch_size,
            eval_train=cfg.eval.train, eval_federated=cfg.eval.federated,
            threads=cfg.fleet.threads, sinks=sinks or [])
    return Simulation(
        data=data, model_fn=model_fn, algorithm=algorithm,
        client=cfg.client, rounds=cfg.rounds, cohort_size=cfg.cohort.size, seed=cfg.seed,
        sampler=make_sampler(cfg.cohort.sampler, num_examples=num_examples,
                             size=cfg.cohort.size, seed=cfg.seed),
        min_success=cfg.cohort.min_success, dropout=cfg.cohort.dropout,
        fleet=cfg.fleet, eval_every=cfg.eval.every, eval_batch_size=cfg.eval.batch_size,
        eval_train=cfg.eval.train, eval_federated=cfg.eval.federated, clock=cfg.clock,
        threads=cfg.fleet.threads, sinks=sinks or [],
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    history: History
    out: Path


def run_experiment(cfg: RunConfig, *, console: bool = True) -> RunResult:
    """Run a config end to end, writing its run directory.

    On Ctrl-C or an error mid-run the directory still gets the model of the last completed
    round and the plot of the rounds done. On a worker rank of the distributed fleet (torchrun
    rank > 0) it only serves rank 0, which writes the run directory, and returns no rows.
    """
    out = Path(cfg.out) if cfg.out else default_out(cfg.name)
    sim = build_simulation(cfg)
    if is_worker(sim.fleet):
        return RunResult(history=sim.run(), out=out)
    try:
        prepare_out(out)
        (out / "config.yaml").write_text(config_to_yaml(cfg), encoding="utf-8")
    except BaseException:
        sim.fleet.close()  # a distributed fleet's workers are waiting: tell them to stop
        raise
    jsonl = JsonlSink(out / "metrics.jsonl")
    sim.sinks.append(jsonl)
    if console:
        sim.sinks.append(ConsoleSink(cfg.rounds, title=cfg.name))
    try:
        history = sim.run()
    finally:
        for sink in sim.sinks:
            sink.close()
        close_run_dir(out, sim.layout, sim.state, cfg.name)
    return RunResult(history=history, out=out)
