"""Asynchronous deployment: clients train on the newest model and are mixed in as they finish.

FedLab's ActiveClientManager and FedAsync's setting: up to ``concurrency`` connected clients
train at once, each on the newest global model the moment it is idle; every result goes to the
:class:`~fedloom.algorithms.asynchronous.AsyncAlgorithm` with its staleness (model versions since
the client received its model): FedAsync mixes it in with a staleness-weighted rate, FedBuff
buffers it. One metrics row per new global model version, shaped like the async simulation's.
A task out longer than ``task_timeout`` is given up and its late result discarded.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from fedloom.algorithms.asynchronous import AsyncAlgorithm
from fedloom.core.errors import TransportError
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientConfig, ServerState
from fedloom.core.rng import SERVER, Purpose, torch_generator
from fedloom.fleets.grpc import GrpcFleet
from fedloom.runtime.async_sim import run_closing, version_row
from fedloom.runtime.loop import EvaluateFn, History
from fedloom.runtime.sinks import Row, Sink


@dataclass(frozen=True, slots=True)
class _Job:
    client_id: int
    version: int
    params: torch.Tensor
    sent: float


class AsyncServerLoop:
    """Runs ``algorithm`` over ``fleet`` until ``versions`` global model versions exist.

    Args:
        concurrency: clients training at once.
        task_timeout: seconds a task may take before it is given up.
        idle_timeout: seconds with no client connected and nothing in flight before the run
            stops with a TransportError.
        on_version: called with the state after each new version (checkpoints).
    """

    def __init__(self, *, algorithm: AsyncAlgorithm, fleet: GrpcFleet, client: ClientConfig,
                 versions: int, layout: ParamLayout, initial_params: torch.Tensor,
                 evaluate: EvaluateFn, seed: int = 0, eval_every: int = 1,
                 concurrency: int = 10, task_timeout: float = 600.0,
                 idle_timeout: float = 600.0, threads: int | None = None,
                 sinks: Sequence[Sink] = (),
                 on_version: Callable[[ServerState], None] | None = None) -> None:
        self.algorithm, self.fleet, self.client = algorithm, fleet, client
        self.versions, self.layout, self.evaluate = versions, layout, evaluate
        self.seed, self.eval_every, self.concurrency = seed, eval_every, concurrency
        self.task_timeout, self.idle_timeout, self.threads = task_timeout, idle_timeout, threads
        self.sinks = list(sinks)
        self.on_version = on_version
        self.state = algorithm.init(initial_params)
        self.starts = 0  # tasks handed out: the downlink round of the next, for its seeds
        self._jobs: dict[int, _Job] = {}

    def run(self) -> History:
        rows = run_closing(self.fleet, self.threads, self._loop)
        return History(rows=tuple(rows), final=self.state, layout=self.layout)

    def _loop(self) -> list[Row]:
        rows: list[Row] = []
        staleness: list[int] = []
        metrics: list[Mapping[str, Mean]] = []
        consumed = failures = 0
        quiet_since = time.monotonic()
        while self.state.round < self.versions:
            self._hand_out()
            self._give_up_late()
            answer = self.fleet.collect(timeout=1.0)
            if answer is None:
                if self._jobs or self.fleet.server.connected():
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > self.idle_timeout:
                    raise TransportError(f"no client for {self.idle_timeout:g} s")
                continue
            job = self._jobs.pop(answer.task_id, None)
            if job is None:
                continue
            if answer.result is None:
                failures += 1
                continue
            lag = self.state.round - job.version
            self.state, changed = self.algorithm.on_result(self.state, answer.result,
                                                           job.params, lag)
            consumed += 1
            staleness.append(lag)
            metrics.append(answer.result.metrics)
            if changed:
                rows.append(self._row(consumed, failures, staleness, metrics))
                staleness, metrics, failures = [], [], 0
        return rows

    def _hand_out(self) -> None:
        """The newest model to idle clients, up to ``concurrency`` in flight (seeded order)."""
        idle = self.fleet.idle_clients()
        free = self.concurrency - len(self._jobs)
        if not idle or free <= 0:
            return
        gen = torch_generator(self.seed, self.starts, SERVER, Purpose.COHORT)
        order = [idle[i] for i in torch.randperm(len(idle), generator=gen).tolist()]
        for cid in order[:free]:
            task = dataclasses.replace(self.algorithm.configure(self.state, cid, self.client),
                                       round=self.starts + 1)
            task_id = self.fleet.submit(task)
            if task_id is not None:
                self._jobs[task_id] = _Job(cid, self.state.round, task.params, time.monotonic())
                self.starts += 1

    def _give_up_late(self) -> None:
        now = time.monotonic()
        late = [tid for tid, job in self._jobs.items() if now - job.sent > self.task_timeout]
        if late:
            self.fleet.forget(late)
            for tid in late:
                del self._jobs[tid]

    def _row(self, consumed: int, failures: int, staleness: list[int],
             metrics: Sequence[Mapping[str, Mean]]) -> Row:
        row = version_row(version=self.state.round, versions=self.versions,
                          eval_every=self.eval_every, evaluate=self.evaluate,
                          params=self.state.params, consumed=consumed, staleness=staleness,
                          metrics=metrics, num_failures=failures)
        if self.on_version is not None:
            self.on_version(self.state)
        for sink in self.sinks:
            sink.log(row)
        return row
