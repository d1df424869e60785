"""The round, once: sample, configure, fit on the fleet, aggregate, evaluate, log.

:class:`ServerLoop` is the one server runtime every run uses: :class:`fedloom.Simulation` builds
its pieces from a dataset and a model, a deployment server builds them around remote clients. The
loop never knows which fleet it has.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from fedloom.algorithms.base import Algorithm, ReducibleAlgorithm
from fedloom.core.errors import ClientError
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import combine
from fedloom.core.packages import (
    ClientConfig,
    ClientFailure,
    ClientResult,
    Downlink,
    Outcome,
    ServerState,
)
from fedloom.core.threads import torch_threads
from fedloom.fleets import Fleet
from fedloom.runtime import heterogeneity
from fedloom.runtime.clock import ClientClock
from fedloom.runtime.sampling import Sampler
from fedloom.runtime.sinks import Row, Sink

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


EvaluateFn = Callable[[torch.Tensor], dict[str, float]]


class ServerLoop:
    """Runs rounds of ``algorithm`` over ``fleet``.

    Args:
        algorithm: the server half (and, through the fleet, the client half).
        fleet: where the clients run.
        sampler: chooses each round's cohort.
        evaluate: metrics of the global model (called every ``eval_every`` rounds and last).
        client: local training hyperparameters sent to every client.
        rounds: the last round to run.
        initial_params: the initial global model (flat), described by ``layout``.
        min_success: usable client results a round needs (None: every client asked); with
            fewer the run stops with a :class:`ClientError` listing the failures, keeping the
            state of the last completed round.
        dropout: the share of each cohort that never answers (simulated system heterogeneity;
            stragglers come from ``client.straggler_fraction``).
        clock: client speeds; rounds then also report ``sim_time`` (simulated seconds).
        on_round: called with the state after each completed round (checkpoints).
    """

    def __init__(self, *, algorithm: Algorithm, fleet: Fleet, sampler: Sampler,
                 evaluate: EvaluateFn, client: ClientConfig, rounds: int, layout: ParamLayout,
                 initial_params: torch.Tensor, seed: int = 0, min_success: int | None = None,
                 dropout: float = 0.0, eval_every: int = 1, clock: ClientClock | None = None,
                 threads: int | None = None, sinks: Sequence[Sink] = (),
                 on_round: Callable[[ServerState], None] | None = None) -> None:
        self.algorithm = algorithm
        self.fleet = fleet
        self.sampler = sampler
        self.evaluate = evaluate
        self.client = client
        self.rounds = rounds
        self.layout = layout
        self.initial_params = initial_params
        self.seed = seed
        self.min_success = min_success
        self.dropout = dropout
        self.eval_every = eval_every
        self.clock = clock
        self.sim_time = 0.0
        self.threads = threads
        self.sinks = list(sinks)
        self.on_round = on_round
        self.state = algorithm.init(initial_params)
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
                    if self.on_round is not None:
                        self.on_round(self.state)
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
