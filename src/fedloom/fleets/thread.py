"""The thread fleet: clients on a pool of threads in this process.

Each thread trains on its own :class:`LocalTrainer` and every client draws its batches from its
own generator, so results do not depend on which thread runs which client or when. torch
releases the GIL inside its kernels; on free-threaded Python the Python parts run in parallel too.
torch's thread count is process-global: it is set to ``fleet.threads`` (default 1) while the
fleet is open and restored by ``close``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import cast

import torch

from fedloom.core.metrics import Mean, combine
from fedloom.core.packages import ClientFailure, Downlink, Outcome
from fedloom.fleets.base import FleetBase
from fedloom.fleets.client_worker import ClientWorker, EvalJob, eval_slices
from fedloom.fleets.config import FleetConfig, FleetKind
from fedloom.fleets.pools import JobError, ThreadPool
from fedloom.training.spec import ClientSpec

log = logging.getLogger(__name__)


class ThreadFleet(FleetBase):
    """Clients on ``fleet.workers`` threads (default: one per core)."""

    def __init__(self, spec: ClientSpec, cfg: FleetConfig | None = None) -> None:
        self.cfg = cfg or FleetConfig(kind=FleetKind.THREAD)
        self.spec = spec
        self.workers = self.cfg.workers or os.cpu_count() or 1
        self._pool: ThreadPool | None = None

    def _open(self) -> ThreadPool:
        if self._pool is None:
            self._pool = ThreadPool(self._worker, workers=self.workers,
                                    devices=self.cfg.device_list, threads=self.cfg.threads or 1)
        return self._pool

    def _worker(self, index: int, device: str) -> ClientWorker:
        return ClientWorker(self.spec, device)

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]:
        ordered = sorted(tasks, key=lambda t: t.client_id)
        replies = self._open().map(ordered)
        return [ClientFailure(round=t.round, client_id=t.client_id, stage="worker",
                              message=r.message) if isinstance(r, JobError) else cast(Outcome, r)
                for t, r in zip(ordered, replies)]

    def evaluate(self, params: torch.Tensor) -> dict[str, Mean] | None:
        """Central evaluation, each thread taking a contiguous slice of the test set."""
        if self.spec.test is None:
            return None
        slices = eval_slices(len(self.spec.test), self.spec.eval_batch_size, self.workers)
        replies = self._open().map([EvalJob(params=params, row=0, start=a, stop=b)
                                    for a, b in slices])
        if not all(isinstance(r, dict) for r in replies):
            log.warning("evaluation on the threads failed (%s); evaluating in the server",
                        [r for r in replies if not isinstance(r, dict)])
            return None
        return combine(cast(list[Mapping[str, Mean]], replies))

    def close(self) -> None:
        """Stop the threads and restore torch's thread count; a later fit starts afresh."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()

    def __enter__(self) -> ThreadFleet:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
