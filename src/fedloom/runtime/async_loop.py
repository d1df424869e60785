"""The one asynchronous loop: clients train on the newest model and are mixed in as they finish.

FedLab's ActiveClientManager and FedAsync's setting: up to ``concurrency`` clients train at
once, each on the newest global model the moment it is idle; every result goes to the
:class:`~fedloom.algorithms.base.AsyncAlgorithm` with its staleness (model versions since the
client received its model): FedAsync mixes it in with a staleness-weighted rate, FedBuff buffers
it. One metrics row per new global model version.

Which idle clients get the model is the ``selector``'s choice (FLSim's user selectors:
:mod:`fedloom.runtime.async_selection`; by default uniformly at random from the generator of
``(seed, tasks handed out)``).

The loop runs on any :class:`~fedloom.fleets.base.AsyncFleet`: remote clients on the wall clock
(:class:`~fedloom.fleets.grpc.GrpcFleet`) or simulated clients on a simulated clock
(:class:`~fedloom.runtime.simulated_clock.SimulatedClock` over any fleet). A task out longer than
``task_timeout`` seconds on the fleet's clock is given up and its late result discarded.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fedloom.algorithms.base import AsyncAlgorithm
from fedloom.algorithms.client_store import ClientStateStore
from fedloom.core.errors import TransportError
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean, combine
from fedloom.core.packages import ClientConfig, ClientResult, checked
from fedloom.core.rng import SERVER, Purpose, torch_generator
from fedloom.core.threads import torch_threads
from fedloom.core.traffic import Float32Sizes, Traffic
from fedloom.fleets.base import AsyncFleet, meter_of
from fedloom.runtime.async_selection import SelectorChoice, make_selector
from fedloom.runtime.checkpoint import (
    Checkpoint,
    Checkpointer,
    check_resumable,
    record,
    restore_store,
    rows_up_to,
    store_contents,
)
from fedloom.runtime.loop import EvaluateFn, History
from fedloom.runtime.sinks import Row, Sink

SIZES = Float32Sizes()  # asynchronous algorithms send uncompressed packages


@dataclass(frozen=True, slots=True)
class _Job:
    client_id: int
    version: int
    params: torch.Tensor
    sent: float


@dataclass(slots=True)
class _Window:
    """What happened since the last new model version."""

    consumed: int = 0
    failures: int = 0
    compute_seconds: float = 0.0
    staleness: list[int] = dataclasses.field(default_factory=list)
    metrics: list[Mapping[str, Mean]] = dataclasses.field(default_factory=list)


class AsyncLoop:
    """Runs ``algorithm`` over ``fleet`` until ``versions`` global model versions exist.

    Args:
        concurrency: clients training at once.
        task_timeout: seconds (on the fleet's clock) a task may take before it is given up
            (None: never).
        idle_timeout: wall seconds with no client reachable and nothing in flight before the
            run stops with a TransportError.
        store: the algorithm's client-state store (what a checkpoint saves besides the state).
        checkpointer: writes a checkpoint every so many versions.
        selector: which idle clients start (a name: ``random``, ``round_robin``; or an FLSim
            selector object); ``num_clients``: the registered clients it cycles over (None:
            the fleet's idle clients at the start).
    """

    def __init__(self, *, algorithm: AsyncAlgorithm, fleet: AsyncFleet, client: ClientConfig,
                 versions: int, layout: ParamLayout, initial_params: torch.Tensor,
                 evaluate: EvaluateFn, seed: int = 0, eval_every: int = 1,
                 concurrency: int = 10, task_timeout: float | None = 600.0,
                 idle_timeout: float = 600.0, threads: int | None = None,
                 sinks: Sequence[Sink] = (), store: ClientStateStore | None = None,
                 checkpointer: Checkpointer | None = None, selector: SelectorChoice = "random",
                 num_clients: int | None = None) -> None:
        self.algorithm, self.fleet, self.client = algorithm, fleet, client
        self.selector = make_selector(selector, num_clients=len(fleet.idle_clients())
                                      if num_clients is None else num_clients)
        self.versions, self.layout, self.evaluate = versions, layout, evaluate
        self.seed, self.eval_every, self.concurrency = seed, eval_every, concurrency
        self.task_timeout, self.idle_timeout, self.threads = task_timeout, idle_timeout, threads
        self.sinks = list(sinks)
        self.store, self.checkpointer = store, checkpointer
        self.state = algorithm.init(initial_params)
        self.starts = 0  # tasks handed out: the downlink round of the next, for its seeds
        self.rows: list[Row] = []
        self._jobs: dict[int, _Job] = {}
        self._down = self._up = 0  # payload bytes of tasks handed out and results consumed
        self._mark = self._traffic()  # at the last row: a row reports what moved since

    def run(self) -> History:
        start = len(self.rows)
        with torch_threads(self.threads):
            try:
                self._loop()
            finally:
                self.fleet.close()
        return History(rows=tuple(self.rows[start:]), final=self.state, layout=self.layout)

    def _loop(self) -> None:
        window = _Window()
        quiet_since = time.monotonic()
        while self.state.round < self.versions:
            self._hand_out()
            self._give_up_late()
            arrival = self.fleet.collect(timeout=1.0)
            if arrival is None:
                if self._jobs or self.fleet.reachable():
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > self.idle_timeout:
                    raise TransportError(f"no client for {self.idle_timeout:g} s")
                continue
            job = self._jobs.pop(arrival.task_id, None)
            if job is None:
                continue
            window.compute_seconds += arrival.compute_seconds
            outcome = checked(arrival.outcome, self.layout.size)
            if not isinstance(outcome, ClientResult):
                window.failures += 1
                continue
            lag = self.state.round - job.version
            self.state, changed = self.algorithm.on_result(self.state, outcome, job.params, lag)
            window.consumed += 1
            self._up += SIZES.uplink(outcome)
            window.staleness.append(lag)
            window.metrics.append(outcome.metrics)
            if changed:
                record(self._row(window), last=self.versions, rows=self.rows, sinks=self.sinks,
                       checkpointer=self.checkpointer, snapshot=self.snapshot)
                window = _Window(consumed=window.consumed)

    def _traffic(self) -> Traffic:
        """Running totals: measured by a fleet that can (remote clients), else counted."""
        metered = meter_of(self.fleet)
        if metered is not None:
            return metered.traffic()
        return Traffic(bytes_down=self._down, bytes_up=self._up)

    def _hand_out(self) -> None:
        """The newest model to idle clients, up to ``concurrency`` in flight (seeded order)."""
        free = self.concurrency - len(self._jobs)
        if free <= 0:
            return
        idle = self.fleet.idle_clients()
        if not idle:
            return
        gen = torch_generator(self.seed, self.starts, SERVER, Purpose.COHORT)
        for cid in self.selector.select(idle, free, gen)[:free]:
            task = dataclasses.replace(
                self.algorithm.configure(self.state.round, self.state, [cid], self.client)[0],
                round=self.starts + 1)
            task_id = self.fleet.submit(task)
            if task_id is not None:
                self._jobs[task_id] = _Job(cid, self.state.round, task.params, self.fleet.now())
                self._down += SIZES.downlink(task)
                self.starts += 1

    def _give_up_late(self) -> None:
        if self.task_timeout is None:
            return
        now = self.fleet.now()
        late = [tid for tid, job in self._jobs.items() if now - job.sent > self.task_timeout]
        if late:
            self.fleet.forget(late)
            for tid in late:
                del self._jobs[tid]

    def _row(self, window: _Window) -> Row:
        """The row of a new global model version: updates consumed, mean staleness, train
        loss, failures, and the evaluation on its cadence (the last version always)."""
        train = combine(window.metrics)
        row: Row = {"round": self.state.round, "client_updates": window.consumed,
                    "mean_staleness": sum(window.staleness) / max(len(window.staleness), 1),
                    "train_loss": train["train_loss"].value if "train_loss" in train else None,
                    "num_failures": window.failures, "fit_seconds": window.compute_seconds}
        now = self._traffic()
        row.update((now - self._mark).row())
        self._mark = now
        if self.fleet.simulated:
            row["sim_time"] = self.fleet.now()
        version = self.state.round
        if version % self.eval_every == 0 or version == self.versions:
            start = time.perf_counter()
            row.update(self.evaluate(self.state.params))
            row["eval_seconds"] = time.perf_counter() - start
        else:
            row["test_accuracy"] = row["test_loss"] = None
        return row

    def snapshot(self) -> Checkpoint:
        """What a checkpoint holds of this loop now (tasks in flight are not kept: a resumed
        run hands out fresh ones)."""
        return Checkpoint(state=self.state, store=store_contents(self.store),
                          rows=tuple(self.rows), info={"starts": self.starts,
                                                       "selector": self.selector.position()})

    def restore(self, ckpt: Checkpoint, directory: Path) -> None:
        """Continue from ``ckpt``, read from ``directory``."""
        check_resumable(ckpt, self.state, directory)
        self.state = ckpt.state
        restore_store(self.store, ckpt.store)
        self.rows = rows_up_to(ckpt.rows, ckpt.state.round)
        self.starts = int(ckpt.info.get("starts", 0))
        self.selector.restore(int(ckpt.info.get("selector", 0)))
