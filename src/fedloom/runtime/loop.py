"""The round, once: select, configure, fit on the fleet, aggregate, evaluate, log, checkpoint.

:class:`ServerLoop` is the one synchronous server runtime every run uses (a simulation, a
torchrun job, a deployment server); :func:`fedloom.app.build.build_run` assembles it from a
config. It never knows which fleet it has: what is special to one fleet (worker ranks, reduced
updates, remote clients) lives in that fleet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from fedloom.algorithms.base import Algorithm
from fedloom.algorithms.client_store import ClientStateStore
from fedloom.core.errors import ClientError, RoundAborted
from fedloom.core.finite import finite_squared_norm
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean, combine
from fedloom.core.packages import (
    ClientConfig,
    ClientFailure,
    ClientResult,
    ServerState,
    split_outcomes,
)
from fedloom.core.threads import torch_threads
from fedloom.core.traffic import Float32Sizes, Traffic, WireSizes, simulated_traffic
from fedloom.fleets.base import Fleet, meter_of, serve_as_worker
from fedloom.runtime import heterogeneity
from fedloom.runtime.checkpoint import (
    Checkpoint,
    Checkpointer,
    check_resumable,
    record,
    restore_store,
    rows_up_to,
    save_if_due,
    store_contents,
)
from fedloom.runtime.clock import ClientClock
from fedloom.runtime.sampling import Sampler
from fedloom.runtime.sinks import Row, Sink

log = logging.getLogger(__name__)

EvaluateFn = Callable[[torch.Tensor], dict[str, float]]
LossesFn = Callable[[torch.Tensor, Sequence[int]], dict[int, Mean]]


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    """What a run produced: one metrics row per round and the final server state."""

    rows: tuple[Row, ...]
    final: ServerState
    layout: ParamLayout

    def series(self, key: str) -> list[float | int | str | None]:
        return [row.get(key) for row in self.rows]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The final global model as named tensors (load it with ``model.load_state_dict``)."""
        return self.layout.unflatten(self.final.params)


class RoundSelection:
    """The :class:`~fedloom.algorithms.base.Selection` a round offers the algorithm: the
    sampler's draws for this round, and the clients' losses at the current model (asked of
    the fleet, else computed by ``losses`` on the server's copy of the data)."""

    def __init__(self, *, sampler: Sampler, round: int, params: torch.Tensor, fleet: Fleet,
                 losses: LossesFn | None) -> None:
        self.size = sampler.size
        self._sampler, self._round, self._params = sampler, round, params
        self._fleet, self._losses = fleet, losses

    def sample(self, size: int) -> list[int]:
        return self._sampler.sample(self._round, size)

    def losses(self, client_ids: Sequence[int]) -> dict[int, float]:
        found = self._fleet.client_losses(self._params, client_ids)
        if found is None:
            if self._losses is None:
                raise ClientError("the algorithm asks for the clients' losses, but this run "
                                  "can compute none", round=self._round, stage="select")
            found = self._losses(self._params, client_ids)
        return {cid: m.value for cid, m in found.items()}


class ServerLoop:
    """Runs rounds of ``algorithm`` over ``fleet``.

    Args:
        algorithm: the server half (and, through the fleet, the client half).
        fleet: where the clients run.
        sampler: draws each round's candidates (the cohort, unless the algorithm selects).
        evaluate: metrics of the global model (called every ``eval_every`` rounds and last).
        client: local training hyperparameters sent to every client.
        rounds: the last round to run.
        initial_params: the initial global model (flat), described by ``layout``.
        min_success: usable client results a round needs (None: every client asked).
        retries: how many times a round with fewer usable results (or whose aggregate would not
            be finite) is run again with a fresh cohort (drawn as the sampler would for the
            round key ``round + attempt * RETRY_STRIDE``) before the run stops with a
            :class:`ClientError` listing the failures, keeping the state of the last completed
            round. ``on_retry(round, attempt)`` is called before each retry (a deployment
            waits there for enough clients).
        dropout: the share of each cohort that never answers (simulated system heterogeneity;
            stragglers come from ``client.straggler_fraction``).
        clock: client speeds; rounds then also report ``sim_time`` (simulated seconds).
        losses: clients' losses at a model, for algorithms that select by them, where the
            fleet cannot ask the clients.
        store: the algorithm's client-state store (what a checkpoint saves besides the state).
        checkpointer: writes a checkpoint every so many rounds.
        stop_before: asked before each round with its number; a reason (a string) ends the
            run there, after a checkpoint of the last round run (a privacy budget that
            round would exceed).
        sizes: the payload bytes each package would have on the wire, for the rows'
            ``bytes_down`` and ``bytes_up`` (default: every tensor's bytes); a fleet that
            measures its traffic, or wraps one that does (:func:`~fedloom.fleets.base.meter_of`),
            reports that instead.
            Only the attempt that completed a round is counted.
        background_evaluate: evaluation off the critical path: round r's model (an immutable
            copy) is evaluated by this function on a background thread while round r+1 trains,
            so it must not use the fleet. Rows still come out in round order and complete (row
            r once r+1 has trained, or at the end); the last round is evaluated in line. A
            round whose checkpoint is due is checkpointed as it ends, its row marked
            :data:`EVAL_PENDING` (:meth:`restore` evaluates that model again). Its
            ``eval_seconds`` is then the background evaluation's time and ``round_seconds``
            the critical path's.
    """

    def __init__(self, *, algorithm: Algorithm, fleet: Fleet, sampler: Sampler,
                 evaluate: EvaluateFn, client: ClientConfig, rounds: int, layout: ParamLayout,
                 initial_params: torch.Tensor, seed: int = 0, min_success: int | None = None,
                 dropout: float = 0.0, eval_every: int = 1, clock: ClientClock | None = None,
                 threads: int | None = None, sinks: Sequence[Sink] = (),
                 losses: LossesFn | None = None, store: ClientStateStore | None = None,
                 checkpointer: Checkpointer | None = None, retries: int = 0,
                 on_retry: Callable[[int, int], None] | None = None,
                 stop_before: Callable[[int], str | None] | None = None,
                 sizes: WireSizes | None = None,
                 background_evaluate: EvaluateFn | None = None) -> None:
        self.algorithm, self.fleet, self.sampler = algorithm, fleet, sampler
        self.background_evaluate = background_evaluate
        self._pending: _Pending | None = None
        self.sizes = sizes or Float32Sizes()
        self.stop_before = stop_before
        self.stopped: str | None = None  # why the run ended before ``rounds``, if it did
        self.retries, self.on_retry = retries, on_retry
        self.evaluate, self.client, self.rounds = evaluate, client, rounds
        self.layout, self.initial_params, self.seed = layout, initial_params, seed
        self.min_success, self.dropout, self.eval_every = min_success, dropout, eval_every
        self.clock, self.threads, self.sinks = clock, threads, list(sinks)
        self.losses, self.checkpointer = losses, checkpointer
        #: what a checkpoint saves besides the state: the store given, else the algorithm's
        self.store = store if store is not None else algorithm.store
        #: held back during a round's attempt (the algorithm's and the given one)
        self._staged = [] if self.store is None else [self.store]
        if algorithm.store is not None and algorithm.store is not self.store:
            self._staged.append(algorithm.store)
        self.sim_time = 0.0
        self.rows: list[Row] = []  # every row of the run, restored ones included
        self.state = algorithm.init(initial_params)

    def run(self) -> History:
        """Run the rounds after the current state's; returns the rows of this call. On a
        process that serves another's fleet (a torchrun rank other than 0) it serves instead
        until that fleet stops, and returns no rows."""
        if self.fleet.is_worker:
            serve_as_worker(self.fleet, self.threads)
            return History(rows=(), final=self.state, layout=self.layout)
        start = len(self.rows)
        pool = None if self.background_evaluate is None else ThreadPoolExecutor(
            1, thread_name_prefix="fedloom-eval")
        with torch_threads(self.threads):
            try:
                first = self.state.round + 1
                for rnd in range(first, self.rounds + 1 if not self._stops(first) else first):
                    self.state, row = (self.run_round(rnd, self.state) if pool is None
                                       else self._round(rnd, self.state, pool))
                    self._flush()  # the previous round's row, evaluated while this one trained
                    stop = rnd < self.rounds and self._stops(rnd + 1)
                    if isinstance(row, tuple):  # evaluating while the next round trains
                        self._pending = row
                        save_if_due(self.checkpointer, rnd, last=rnd if stop else self.rounds,
                                    snapshot=self.snapshot)
                    else:
                        record(row, last=rnd if stop else self.rounds, rows=self.rows,
                               sinks=self.sinks, checkpointer=self.checkpointer,
                               snapshot=self.snapshot)
                    if stop:
                        break
            finally:
                try:
                    self._flush()  # what was done is kept, even when a later round failed
                finally:
                    if pool is not None:
                        pool.shutdown(wait=True)
                    self.fleet.close()
        return History(rows=tuple(self.rows[start:]), final=self.state, layout=self.layout)

    def _flush(self) -> None:
        """Record the row whose evaluation ran in the background, once it is done (its round's
        checkpoint, if due, was written when the round ended, with the row marked
        :data:`EVAL_PENDING`: a resumed run evaluates that model again)."""
        if self._pending is None:
            return
        (row, future), self._pending = self._pending, None
        metrics, seconds = future.result()
        row.update(metrics)
        row["eval_seconds"] = seconds
        record(row, last=self.rounds, rows=self.rows, sinks=self.sinks, checkpointer=None,
               snapshot=self.snapshot)

    def _stops(self, rnd: int) -> bool:
        """Whether ``stop_before`` (a privacy budget) forbids round ``rnd``; logs why."""
        reason = None if self.stop_before is None else self.stop_before(rnd)
        if reason is not None:
            log.warning("stopping before round %d: %s", rnd, reason)
            self.stopped = reason
        return reason is not None

    def run_round(self, rnd: int, state: ServerState) -> tuple[ServerState, Row]:
        """One round: the same steps a user-owned loop would take (again with a fresh cohort
        while it fails and ``retries`` allow)."""
        state, row = self._round(rnd, state, None)
        assert not isinstance(row, tuple)
        return state, row

    def _round(self, rnd: int, state: ServerState, background: ThreadPoolExecutor | None,
               ) -> tuple[ServerState, Row | _Pending]:
        """:meth:`run_round`; with ``background`` (a one-thread pool) its evaluation may be
        left running there: the row then comes with the future of its metrics and seconds."""
        start = time.perf_counter()
        attempt = 0
        while isinstance(outcome := self._attempt(rnd, state, attempt), _Failed):
            if attempt == self.retries:
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                raise ClientError(outcome.reason + tries, round=rnd, stage="fit")
            log.warning("round %d, attempt %d: %s; retrying with a fresh cohort", rnd,
                        attempt + 1, outcome.reason)
            attempt += 1
            if self.on_retry is not None:
                self.on_retry(rnd, attempt)
        fit_done, state = outcome.fit_done, outcome.state
        cohort, results, failures, hetero = (outcome.cohort, outcome.results, outcome.failures,
                                             outcome.hetero)
        agg_done = time.perf_counter()
        row: Row = {"round": rnd, "cohort_size": len(cohort), "num_results": len(results),
                    "num_failures": len(failures), "num_dropped": len(hetero.dropped),
                    "train_loss": _train_loss(results), **outcome.traffic.row()}
        if attempt:
            row["round_attempts"] = attempt + 1
        row.update(self.algorithm.row_metrics(state))
        if self.clock is not None:
            self.sim_time += max((self.clock.duration(r.client_id, r.num_steps)
                                  for r in results), default=0.0)
            row["sim_time"] = self.sim_time
        evaluated = rnd % self.eval_every == 0 or rnd == self.rounds
        if evaluated and background is not None and rnd < self.rounds:
            assert self.background_evaluate is not None
            future = background.submit(_timed, self.background_evaluate, state.params.clone())
            row.update(fit_seconds=fit_done - start, aggregate_seconds=agg_done - fit_done,
                       round_seconds=time.perf_counter() - start)
            return state, (row, future)
        self._flush()  # the evaluators are not shared with a background evaluation
        eval_start = time.perf_counter()
        if evaluated:
            row.update(self.evaluate(state.params))
        else:
            row["test_loss"] = row["test_accuracy"] = None
        end = time.perf_counter()
        row.update(fit_seconds=fit_done - start, aggregate_seconds=agg_done - fit_done,
                   eval_seconds=end - eval_start, round_seconds=end - start)
        return state, row

    def _attempt(self, rnd: int, state: ServerState, attempt: int) -> _Done | _Failed:
        """Select, configure, fit and aggregate once; what came of it. The client state the
        attempt stores is kept only when its aggregate is adopted (see ``client_store``)."""
        for store in self._staged:
            store.begin()
        outcome: _Done | _Failed | None = None
        try:
            outcome = self._try(rnd, state, attempt)
            return outcome
        finally:
            for store in self._staged:
                if isinstance(outcome, _Done):
                    store.commit()
                else:
                    store.discard()

    def _try(self, rnd: int, state: ServerState, attempt: int) -> _Done | _Failed:
        key = rnd + attempt * RETRY_STRIDE
        cohort = self.algorithm.select(rnd, state, RoundSelection(
            sampler=self.sampler, round=key, params=state.params, fleet=self.fleet,
            losses=self.losses))
        hetero = heterogeneity.apply(
            self.algorithm.configure(rnd, state, cohort, self.client), round=rnd, seed=self.seed,
            dropout=self.dropout, straggler_fraction=self.client.straggler_fraction,
            keeps_partial_work=self.algorithm.keeps_partial_work)
        metered = meter_of(self.fleet)
        before = None if metered is None else metered.traffic()
        try:
            outcomes = self.fleet.fit(rnd, hetero.tasks)
        except RoundAborted as err:  # the fleet's round failed as a whole (secure aggregation)
            return _Failed(str(err))
        results, failures = split_outcomes(outcomes, self.layout.size)
        traffic = (simulated_traffic(self.sizes, hetero.tasks, results)
                   if metered is None or before is None else metered.traffic() - before)
        fit_done = time.perf_counter()
        for f in failures:
            log.warning("round %d: client %d failed at %s: %s", rnd, f.client_id, f.stage,
                        f.message)
        needed = len(hetero.tasks) if self.min_success is None else self.min_success
        if len(results) < needed:
            detail = "; ".join(f"client {f.client_id} at {f.stage}: {f.message}"
                               for f in failures)
            return _Failed(f"only {len(results)} of {len(hetero.tasks)} clients succeeded, "
                           f"cohort.min_success needs {needed}: {detail}")
        new = self.algorithm.aggregate(rnd, state, results)
        if not adoptable(new.params):
            return _Failed(f"the aggregate or its norm is not finite: the global model of round "
                           f"{rnd - 1} is kept; the largest values came from clients "
                           f"{_largest(results)}")
        return _Done(state=new, cohort=cohort, results=results, failures=failures,
                     hetero=hetero, fit_done=fit_done, traffic=traffic)

    def snapshot(self) -> Checkpoint:
        """What a checkpoint holds of this loop now."""
        rows = tuple(self.rows)
        if self._pending is not None:  # this round's row, its evaluation still running
            rows += ({**self._pending[0], EVAL_PENDING: 1},)
        return Checkpoint(state=self.state, store=store_contents(self.store),
                          rows=rows, info={"sim_time": self.sim_time})

    def restore(self, ckpt: Checkpoint, directory: Path) -> None:
        """Continue from ``ckpt``, read from ``directory`` (the next :meth:`run` starts after
        its round)."""
        check_resumable(ckpt, self.state, directory)
        self.state = ckpt.state
        restore_store(self.store, ckpt.store)
        self.rows = rows_up_to(ckpt.rows, ckpt.state.round)
        if self.rows and self.rows[-1].pop(EVAL_PENDING, None) is not None:
            self.rows[-1].update(self.evaluate(self.state.params))  # killed while evaluating
        self.sim_time = float(ckpt.info.get("sim_time", 0.0))


#: marks a checkpointed row whose evaluation had not finished when the checkpoint was written
EVAL_PENDING = "eval_pending"
_Pending = tuple[Row, "Future[tuple[dict[str, float], float]]"]
RETRY_STRIDE = 1 << 32  # a retried round's sampler key: beyond any round a run reaches


@dataclass(frozen=True, slots=True)
class _Failed:
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class _Done:
    state: ServerState
    cohort: list[int]
    results: list[ClientResult]
    failures: list[ClientFailure]
    hetero: heterogeneity.Heterogeneity
    fit_done: float
    traffic: Traffic


def _timed(evaluate: EvaluateFn, params: torch.Tensor) -> tuple[dict[str, float], float]:
    start = time.perf_counter()
    return evaluate(params), time.perf_counter() - start


def adoptable(params: torch.Tensor) -> bool:
    """Whether a new global model may be adopted: it and its squared L2 norm are finite in its
    dtype (a model whose norm overflows makes every client's next step overflow)."""
    return finite_squared_norm(params)


def _largest(results: Sequence[ClientResult], count: int = 3) -> list[int]:
    """The clients whose parameters reach the largest magnitudes (the likely cause of an
    aggregate that overflowed)."""
    peaks = sorted(((float(r.params.abs().max()), r.client_id) for r in results), reverse=True)
    return [cid for _, cid in peaks[:count]]


def _train_loss(results: Sequence[ClientResult]) -> float | None:
    train = combine(r.metrics for r in results)
    return train["train_loss"].value if "train_loss" in train else None
