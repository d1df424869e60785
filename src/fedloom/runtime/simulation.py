"""The round loop, once: sample, configure, fit on the fleet, aggregate, evaluate, log.

Example:
    >>> from fedloom import ClientConfig, DataConfig, FedAvg, ModelConfig, Simulation
    >>> from fedloom import load_federated, model_factory
    >>> data = load_federated(DataConfig(name="synthetic", num_clients=10), seed=0)
    >>> model_fn = model_factory(ModelConfig(name="logreg"), data.input_shape, data.num_classes)
    >>> sim = Simulation(data=data, model_fn=model_fn, algorithm=FedAvg(), rounds=2,
    ...                  cohort_size=5, client=ClientConfig(lr=0.01, batch_size=10))
    >>> history = sim.run()
    >>> [row["round"] for row in history.rows]
    [1, 2]
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch.nn import functional as F

from fedloom.algorithms.base import Algorithm, ReducibleAlgorithm
from fedloom.client.spec import ClientSpec
from fedloom.client.trainer import LossFn
from fedloom.core.errors import ClientError, ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean, combine
from fedloom.core.packages import (
    ClientConfig,
    ClientFailure,
    ClientResult,
    Downlink,
    Outcome,
    ServerState,
)
from fedloom.data.dataset import FederatedData
from fedloom.evaluation import CentralEvaluator
from fedloom.fleets import Fleet, FleetConfig, FleetKind, make_fleet
from fedloom.models import ModelFn, init_module
from fedloom.runtime import heterogeneity
from fedloom.runtime.clock import ClientClock, ClockConfig
from fedloom.runtime.evaluate import RoundEvaluator
from fedloom.runtime.sinks import Row, Sink
from fedloom.sampling import Sampler, UniformSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    """What a run produced: one metrics row per round and the final server state."""

    rows: tuple[Row, ...]
    final: ServerState
    layout: ParamLayout

    def series(self, key: str) -> list[float | int | None]:
        return [row.get(key) for row in self.rows]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The final global model as named tensors (load it with ``model.load_state_dict``)."""
        return self.layout.unflatten(self.final.params)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch threads (all cores when None), restoring the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@runtime_checkable
class ServingFleet(Protocol):
    """A fleet spanning processes (torchrun ranks): on a worker it serves rank 0's server loop."""

    is_worker: bool

    def serve(self) -> None: ...


@runtime_checkable
class ReducingFleet(Protocol):
    """A fleet that can return the example-weighted mean of the updates instead of each update
    (``reduces``: the user asked for it) when the algorithm is :class:`ReducibleAlgorithm`."""

    reduces: bool

    def fit_mean(self, round: int, tasks: Sequence[Downlink]) -> tuple[list[Outcome],
                                                                      torch.Tensor | None]: ...


def is_worker(fleet: object) -> bool:
    """Whether this process serves a fleet (a torchrun rank other than 0), not the server loop."""
    return isinstance(fleet, ServingFleet) and fleet.is_worker


def split_outcomes(outcomes: Sequence[Outcome], size: int | None) -> tuple[list[ClientResult],
                                                                          list[ClientFailure]]:
    """Usable results sorted by client id, and failures (including updates that fail checks).

    ``size`` None: the updates were checked where they were reduced and are not here to check.
    """
    ok: list[ClientResult] = []
    failed: list[ClientFailure] = []
    for o in outcomes:
        if isinstance(o, ClientFailure):
            failed.append(o)
        elif size is None:
            ok.append(o)
        elif o.params.shape != (size,):
            failed.append(ClientFailure(round=o.round, client_id=o.client_id, stage="validate",
                                        message=f"update has shape {tuple(o.params.shape)}, "
                                                f"expected ({size},)"))
        elif not bool(torch.isfinite(o.params).all()):
            failed.append(ClientFailure(round=o.round, client_id=o.client_id, stage="validate",
                                        message="update contains NaN or infinite values"))
        else:
            ok.append(o)
    ok.sort(key=lambda r: r.client_id)
    return ok, failed


class Simulation:
    """A federated simulation: the server loop over a fleet of simulated clients.

    Args:
        data: the federated dataset.
        model_fn: builds the model; the initial global model is drawn from ``seed``.
        algorithm: the server and client halves (e.g. :class:`fedloom.FedAvg`).
        client: local training hyperparameters sent to every client.
        rounds: number of rounds.
        cohort_size: clients per round (uniform sampling without replacement).
        fleet: a fleet kind ("serial", "process", ...), a :class:`FleetConfig`, or a
            :class:`Fleet` object built by the caller.
        min_success: usable client results a round needs (None: the whole cohort); with fewer
            the run stops with a :class:`ClientError` listing the failures, keeping the state
            of the last completed round.
        dropout: the share of each cohort that never answers (simulated system heterogeneity;
            stragglers come from ``client.straggler_fraction``).
        eval_every: evaluate the global model every this many rounds (and at the end).
        eval_train: also evaluate the global model on all training examples.
        eval_federated: also evaluate on every client's local test split (and personal models).
        clock: client speeds; rounds then also report ``sim_time`` (simulated seconds).
        threads: torch threads of this process while running (None: all cores).
    """

    def __init__(self, *, data: FederatedData, model_fn: ModelFn, algorithm: Algorithm,
                 client: ClientConfig, rounds: int, cohort_size: int, seed: int = 0,
                 fleet: str | FleetConfig | Fleet = "serial", sampler: Sampler | None = None,
                 min_success: int | None = None, dropout: float = 0.0, eval_every: int = 1,
                 eval_batch_size: int = 1000, eval_train: bool = False,
                 eval_federated: bool = False, clock: ClockConfig | None = None,
                 threads: int | None = None,
                 loss_fn: LossFn = F.cross_entropy, sinks: Sequence[Sink] = ()) -> None:
        if rounds < 1:
            raise ConfigError(f"rounds = {rounds}: must be >= 1")
        self.data = data
        self.model_fn = model_fn
        self.algorithm = algorithm
        self.client = client
        self.rounds = rounds
        self.seed = seed
        self.eval_every = eval_every
        self.min_success = min_success
        self.dropout = dropout
        self.threads = threads
        self.clock = None if clock is None else ClientClock(clock, num_clients=data.num_clients,
                                                             seed=seed)
        self.sim_time = 0.0
        self.sinks = list(sinks)
        model = init_module(model_fn, seed)
        self.layout = ParamLayout.from_module(model)
        self.initial_params = self.layout.module_to_flat(model)
        self.sampler = sampler or UniformSampler(num_clients=data.num_clients, size=cohort_size,
                                                 seed=seed)
        self.spec = ClientSpec(model_fn=model_fn, train=data.train,
                               client_indices=data.client_train, seed=seed,
                               local=algorithm.local, loss_fn=loss_fn, test=data.test,
                               eval_batch_size=eval_batch_size)
        if isinstance(fleet, str):
            kinds = [k.value for k in FleetKind]
            if fleet not in kinds:
                raise ConfigError(f"fleet.kind = {fleet!r}: must be one of {', '.join(kinds)}")
            fleet = FleetConfig(kind=FleetKind(fleet))
        self.fleet: Fleet = make_fleet(fleet, self.spec) if isinstance(fleet, FleetConfig) \
            else fleet
        self.evaluator = CentralEvaluator(model_fn=model_fn, test=data.test,
                                          batch_size=eval_batch_size)
        self.evaluate = RoundEvaluator(
            central=self._central, model_fn=model_fn, data=data, batch_size=eval_batch_size,
            train=eval_train, federated=eval_federated,
            personal=getattr(algorithm, "personal_params", None))
        self.state = algorithm.init(self.initial_params)
        self.reducer = self._reducer()

    def _reducer(self) -> tuple[ReducingFleet, ReducibleAlgorithm] | None:
        """The fleet and algorithm when updates are to be reduced (``fleet.aggregation=reduce``)."""
        fleet, algorithm = self.fleet, self.algorithm
        if not (isinstance(fleet, ReducingFleet) and fleet.reduces) or is_worker(fleet):
            return None
        if isinstance(algorithm, ReducibleAlgorithm) and algorithm.reducible:
            return fleet, algorithm
        log.warning("fleet.aggregation = reduce: algorithm %r is not reducible (its aggregate is "
                    "not an example-weighted mean); aggregating exactly instead", algorithm.name)
        return None

    def _central(self, params: torch.Tensor) -> dict[str, Mean]:
        spread = self.fleet.evaluate(params)
        return self.evaluator(params) if spread is None else spread

    def run(self) -> History:
        """Run all rounds from the current state; returns the history of this call."""
        rows: list[Row] = []
        if isinstance(self.fleet, ServingFleet) and self.fleet.is_worker:
            with torch_threads(self.threads):
                try:  # until rank 0's server loop ends
                    self.fleet.serve()
                finally:
                    self.fleet.close()
            return History(rows=(), final=self.state, layout=self.layout)
        with torch_threads(self.threads):
            try:
                for rnd in range(self.state.round + 1, self.rounds + 1):
                    self.state, row = self.run_round(rnd, self.state)
                    rows.append(row)
                    for sink in self.sinks:
                        sink.log(row)
            finally:
                self.fleet.close()
        return History(rows=tuple(rows), final=self.state, layout=self.layout)

    def run_round(self, rnd: int, state: ServerState) -> tuple[ServerState, Row]:
        """One round: the same steps a user-owned loop would take."""
        start = time.perf_counter()
        cohort = self.sampler.sample(rnd)
        hetero = heterogeneity.apply(
            self.algorithm.configure(rnd, state, cohort, self.client), round=rnd, seed=self.seed,
            dropout=self.dropout, straggler_fraction=self.client.straggler_fraction,
            keeps_partial_work=getattr(self.algorithm, "keeps_partial_work", False))
        tasks = hetero.tasks
        average: torch.Tensor | None = None
        if self.reducer is None:
            outcomes = self.fleet.fit(rnd, tasks)
        else:
            outcomes, average = self.reducer[0].fit_mean(rnd, tasks)
        fit_done = time.perf_counter()
        ok, failed = split_outcomes(outcomes, None if self.reducer else self.layout.size)
        for f in failed:
            log.warning("round %d: client %d failed at %s: %s", rnd, f.client_id, f.stage,
                        f.message)
        needed = len(tasks) if self.min_success is None else self.min_success
        if len(ok) < needed:
            detail = "; ".join(f"client {f.client_id} at {f.stage}: {f.message}" for f in failed)
            raise ClientError(f"only {len(ok)} of {len(tasks)} clients succeeded, "
                              f"cohort.min_success needs {needed}: {detail}", round=rnd,
                              stage="fit")
        if self.reducer is not None and average is not None:
            state = self.reducer[1].aggregate_mean(rnd, state, average)
        else:
            state = self.algorithm.aggregate(rnd, state, ok)
        agg_done = time.perf_counter()
        row: Row = {"round": rnd, "cohort_size": len(cohort), "num_results": len(ok),
                    "num_failures": len(failed), "num_dropped": len(hetero.dropped)}
        train = combine(r.metrics for r in ok)
        row["train_loss"] = train["train_loss"].value if "train_loss" in train else None
        if self.clock is not None:
            self.sim_time += max((self.clock.duration(r.client_id, r.num_steps) for r in ok),
                                 default=0.0)
            row["sim_time"] = self.sim_time
        if rnd % self.eval_every == 0 or rnd == self.rounds:
            row.update(self.evaluate(state.params))
        else:
            row["test_loss"] = row["test_accuracy"] = None
        end = time.perf_counter()
        row.update(fit_seconds=fit_done - start, aggregate_seconds=agg_done - fit_done,
                   eval_seconds=end - agg_done, round_seconds=end - start)
        return state, row
