"""Asynchronous clients on a simulated clock, over any fleet.

:class:`SimulatedClock` is an :class:`~fedloom.fleets.base.AsyncFleet`: a submitted task
finishes ``num_steps * step_time[client]`` simulated seconds after it starts
(:class:`~fedloom.runtime.clock.ClientClock`), and results come back in simulated-time order.
Training itself runs lazily on the wrapped fleet: when the earliest task is collected, every
started task without a result is trained in one ``fleet.fit`` call, so parallel and vectorized
fleets speed up async runs too.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from fedloom.core.counts import Excluding
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientConfig, Downlink, Outcome
from fedloom.fleets.base import Arrival, Fleet
from fedloom.runtime.clock import ClientClock


def local_steps(num_examples: int, cfg: ClientConfig) -> int:
    """How many SGD steps a client with ``num_examples`` takes under ``cfg``."""
    if cfg.steps is not None:
        return cfg.steps
    per_epoch = 1 if cfg.batch_size == 0 else math.ceil(num_examples / cfg.batch_size)
    return cfg.epochs * per_epoch


@dataclass(order=True)
class _Job:
    finish: float
    task_id: int
    task: Downlink = field(compare=False)
    outcome: Outcome | None = field(default=None, compare=False)


class SimulatedClock:
    """``fleet``'s clients as asynchronous workers on a simulated clock.

    Args:
        fleet: trains the tasks (any fleet).
        clock: each client's simulated seconds per local step.
        num_examples: each client's example count (``num_examples(client_id)``).
        num_clients: the registered clients.
    """

    simulated = True

    def __init__(self, fleet: Fleet, *, clock: ClientClock, num_clients: int,
                 num_examples: Sequence[int] | None = None, start: float = 0.0) -> None:
        self.fleet, self.clock, self.num_clients = fleet, clock, num_clients
        self.is_worker = fleet.is_worker
        self.num_examples = num_examples
        self._now = start
        self._queue: list[_Job] = []
        self._busy: dict[int, int] = {}  # client id -> task id
        self._ids = 0

    def idle_clients(self) -> Sequence[int]:
        """Idle clients (every registered one but the busy few, without a list of them); none
        while a task finishes at the current instant: as in FLSim, every device that finishes
        at a time is collected before any device starts at it (ties in finish time go in the
        order the tasks started)."""
        if self._queue and self._queue[0].finish <= self._now:
            return []
        return Excluding(self.num_clients, self._busy)

    def submit(self, task: Downlink) -> int | None:
        if task.client_id in self._busy:
            return None
        self._ids += 1
        n = 0 if self.num_examples is None else self.num_examples[task.client_id]
        finish = self._now + self.clock.duration(task.client_id, local_steps(n, task.config))
        heapq.heappush(self._queue, _Job(finish, self._ids, task))
        self._busy[task.client_id] = self._ids
        return self._ids

    def collect(self, timeout: float) -> Arrival | None:
        """The earliest task to finish (simulated time jumps to its finish); ``timeout`` is
        wall time and unused: a simulated task is always ready."""
        if not self._queue:
            return None
        job = heapq.heappop(self._queue)
        seconds = 0.0
        if job.outcome is None:
            seconds = self._train_pending(job)
        self._now = max(self._now, job.finish)
        del self._busy[job.task.client_id]
        assert job.outcome is not None
        return Arrival(task_id=job.task_id, outcome=job.outcome, compute_seconds=seconds)

    def _train_pending(self, first: _Job) -> float:
        """Train every started task that has no result yet, in one fleet call; wall seconds."""
        pending = [first, *(j for j in self._queue if j.outcome is None)]
        start = time.perf_counter()
        outcomes = {o.client_id: o for o in self.fleet.fit(
            first.task_id, [j.task for j in pending])}
        for j in pending:
            j.outcome = outcomes[j.task.client_id]
        return time.perf_counter() - start

    def forget(self, task_ids: Sequence[int]) -> None:
        gone = set(task_ids)
        self._queue = [j for j in self._queue if j.task_id not in gone]
        heapq.heapify(self._queue)
        self._busy = {c: t for c, t in self._busy.items() if t not in gone}

    def now(self) -> float:
        return self._now

    def reachable(self) -> bool:
        return True

    def evaluate(self, params: torch.Tensor) -> dict[str, Mean] | None:
        return self.fleet.evaluate(params)

    def serve(self) -> None:
        self.fleet.serve()

    def close(self) -> None:
        self.fleet.close()
