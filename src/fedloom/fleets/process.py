"""The process fleet: persistent worker processes fed through shared memory.

Workers start on :meth:`ProcessFleet.start` (a run built from a config calls it as soon as the
fleet exists) or on first use, and live until ``close``; each maps the dataset once (train and
test tensors, client indices) from shared files. Each round the parent writes the downlinks'
distinct global parameter vectors (usually one) into one shared segment, sends the workers small
control messages (round, client id, ClientConfig, row, slot; jobs go to whichever worker is
free: one client each, or a run of consecutive clients once the cohort has more than
:data:`JOBS_PER_WORKER` per worker, so that a large cohort is not a message round trip per
client) and each worker writes its clients' flat parameters into their slots of a shared K x P
slab. Nothing model-sized is pickled. A worker that dies mid-round turns its job's clients into
:class:`ClientFailure` values (stage ``worker``) and is replaced; the run goes on.

With ``fleet.aggregation=reduce`` (a reducible algorithm) no slab of updates exists: each job
adds its clients' updates to its own example-weighted sum (:mod:`fedloom.fleets.reduce`), the
worker writes that one row, the parent adds the rows of the jobs that came back and every result
carries the mean, so the fleet's memory no longer grows with the cohort.

**Results are views.** ``params`` of the results ``fit`` returns are rows of the slab, which the
aggregator reads in place. The next ``fit`` writes into the same slab only if none of those
results is still referenced (the round loop drops them after aggregating); if any is kept (an
async buffer, a user's list), the next fit moves to a fresh slab and the kept rows stay as they
were. The one way to see a row change is to keep only a slice of ``params`` (a view of a view):
``clone()`` it instead.

Example:
    >>> # with ProcessFleet(spec, FleetConfig(kind="process", workers=2)) as fleet:
    >>> #     outcomes = fleet.fit(1, tasks)
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import cast

import torch

from fedloom.core.errors import ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean, combine
from fedloom.core.packages import ClientFailure, ClientResult, Downlink, Outcome
from fedloom.fleets.base import FleetBase
from fedloom.fleets.client_worker import (
    EvalJob,
    FitItem,
    FitJob,
    SharedSpec,
    Uplink,
    as_result,
    eval_slices,
    vectorized_trainer,
)
from fedloom.fleets.config import FleetConfig, FleetKind
from fedloom.fleets.process_pool import ProcessPool
from fedloom.fleets.reduce import PENDING, WeightedSum, reduces
from fedloom.fleets.shm import SharedArena, Slab
from fedloom.training.spec import ClientSpec

log = logging.getLogger(__name__)

#: a cohort is cut into at least this many jobs per worker (finer: one client per job); coarser
#: jobs would balance unequal clients worse, finer ones cost a message round trip per client
#: (1,000 2NN clients of 60 examples on 2 workers, one loaded 2-core run each: fit 4.3 s with
#: one client per job, 3.4 s in jobs of 62)
JOBS_PER_WORKER = 8


def check_picklable(spec: ClientSpec) -> None:
    """Spawned workers rebuild the model and hooks from pickles: refuse what cannot be."""
    for name in ("model_fn", "loss_fn", "local", "extras"):
        value = getattr(spec, name)
        try:
            pickle.dumps(value)
        except Exception as err:
            raise ConfigError(
                f"{name} = {value!r}: cannot be pickled for the process fleet's spawned workers "
                f"({type(err).__name__}: {err}); use a module-level function or a "
                f"functools.partial of one") from None


@dataclass(frozen=True, slots=True)
class FitStats:
    """Where the time of the last ``fit`` went (parent clock, seconds)."""

    broadcast: float  # writing the downlinks' parameters into shared memory
    wall: float  # the whole fit
    busy: tuple[float, ...]  # per worker, inside its handler
    cpu: tuple[float, ...]  # per worker, CPU seconds inside its handler (robust to other load)

    @property
    def overhead(self) -> float:
        """Time not covered by the busiest worker: broadcast, dispatch and collection."""
        return self.wall - max(self.busy, default=0.0)


class _Session:
    """What exists while the fleet is open: the shared files and the worker processes."""

    def __init__(self, spec: ClientSpec, cfg: FleetConfig, workers: int, layout: ParamLayout,
                 vectorized: type | None) -> None:
        self.arena = SharedArena(cfg.share_dir)
        try:
            factory = SharedSpec.share(spec, self.arena, vectorized=vectorized, chunk=cfg.chunk)
            self.down = Slab(self.arena, layout.size, layout.dtype)
            self.up = Slab(self.arena, layout.size, layout.dtype)
            self.sums = Slab(self.arena, layout.size + 1, torch.float64)  # reduce: one per job
            self.pool = ProcessPool(factory, workers=workers, devices=cfg.device_list,
                                    threads=cfg.threads or 1)
        except BaseException:
            self.arena.close()
            raise

    def close(self) -> None:
        self.pool.close()
        self.arena.close()


class ProcessFleet(FleetBase):
    """Clients in a pool of persistent worker processes; see the module docstring."""

    def __init__(self, spec: ClientSpec, cfg: FleetConfig | None = None) -> None:
        self.cfg = cfg or FleetConfig(kind=FleetKind.PROCESS)
        check_picklable(spec)
        self.vectorized = vectorized_trainer() if self.cfg.vectorize else None
        SharedArena(self.cfg.share_dir).close()  # a bad share_dir is an error now, not later
        self.spec = spec
        self.workers = self.cfg.workers or os.cpu_count() or 1
        self.layout = ParamLayout.from_module(spec.model_fn())
        self.reduces = reduces(self.cfg, spec)
        self.last_fit: FitStats | None = None
        self._session: _Session | None = None
        self._lent: list[weakref.ref[torch.Tensor]] = []  # params of the last fit's results

    def _open(self) -> _Session:
        if self._session is None:
            self._session = _Session(self.spec, self.cfg, self.workers, self.layout,
                                     self.vectorized)
        return self._session

    def start(self) -> None:
        """Start the workers now without waiting for them: they fork, map the data and build
        their trainers while the caller goes on (the first ``fit`` waits for them)."""
        self._open()

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]:
        """Train the cohort; results' params are views into the slab (see the module doc)."""
        s = self._open()
        start = time.perf_counter()
        ordered = sorted(tasks, key=lambda t: t.client_id)
        rows = {id(t.params): t.params for t in ordered}  # distinct global vectors, in order
        row_of = {key: r for r, key in enumerate(rows)}
        s.down.ensure(len(rows))
        for r, params in enumerate(rows.values()):
            s.down.tensor[r].copy_(params)
        if not self.reduces:
            s.up.ensure(len(ordered), fresh=any(ref() is not None for ref in self._lent))
        items = [FitItem(slot=k, client_id=t.client_id, round=t.round, row=row_of[id(t.params)],
                         config=t.config, extras=dict(t.extras)) for k, t in enumerate(ordered)]
        parts = self._split(items)
        if self.reduces:
            s.sums.ensure(len(parts))
        jobs = [FitJob(round=round, down=s.down.ref, up=s.up.ref, items=part,
                       sums=s.sums.ref if self.reduces else None, sums_row=j)
                for j, part in enumerate(parts)]
        broadcast = time.perf_counter()
        replies = self._map(s, jobs)
        out = self._reduced(jobs, replies, s.sums.tensor) if self.reduces else [
            o for job, reply in zip(jobs, replies) for o in self._outcomes(job, reply, s.up.tensor)]
        self._lent = [weakref.ref(o.params) for o in out if isinstance(o, ClientResult)]
        self.last_fit = FitStats(broadcast - start, time.perf_counter() - start,
                                 tuple(b[0] for b in s.pool.busy),
                                 tuple(b[1] for b in s.pool.busy))
        return out

    def _map(self, s: _Session, jobs: Sequence[object]) -> list[object]:
        try:
            return s.pool.map(jobs)
        except BaseException:  # Ctrl-C or a worker that cannot start: pipes may be mid-message
            self.close()
            raise

    def _split(self, items: list[FitItem]) -> list[tuple[FitItem, ...]]:
        """Jobs of one client, or of a run of clients where there are more than
        JOBS_PER_WORKER per worker (dynamic assignment); contiguous shares to vectorize."""
        if not self.cfg.vectorize:
            size = max(1, len(items) // (self.workers * JOBS_PER_WORKER))
            return [tuple(items[a:a + size]) for a in range(0, len(items), size)]
        q, r = divmod(len(items), self.workers)
        bounds = list(itertools.accumulate([q + (w < r) for w in range(self.workers)], initial=0))
        return [tuple(items[a:b]) for a, b in itertools.pairwise(bounds) if a < b]

    def _reduced(self, jobs: Sequence[FitJob], replies: Sequence[object],
                 sums: torch.Tensor) -> list[Outcome]:
        """Reducing: the jobs' sums added up (a failed job's row is never read), and every
        result carrying the mean (:mod:`fedloom.fleets.reduce`)."""
        total = WeightedSum(self.layout.size)
        out: list[Outcome] = []
        for job, reply in zip(jobs, replies):
            if isinstance(reply, list):
                total.sums += sums[job.sums_row]
            out += self._outcomes(job, reply, sums)
        return total.results(out, self.layout.dtype)

    @staticmethod
    def _outcomes(job: FitJob, reply: object, up: torch.Tensor) -> list[Outcome]:
        if not isinstance(reply, list):  # WorkerLost or JobError: the whole job failed
            message = getattr(reply, "message", repr(reply))
            return [ClientFailure(round=i.round, client_id=i.client_id, stage="worker",
                                  message=message) for i in job.items]
        return [as_result(i.round, u, up[i.slot] if job.sums is None else PENDING)
                if isinstance(u, Uplink) else u for u, i in zip(reply, job.items)]

    def evaluate(self, params: torch.Tensor) -> dict[str, Mean] | None:
        """Central evaluation, each worker taking a contiguous slice of the test set."""
        if self.spec.test is None:
            return None
        s = self._open()
        s.down.ensure(1)
        s.down.tensor[0].copy_(params)
        slices = eval_slices(len(self.spec.test), self.spec.eval_batch_size, self.workers)
        replies = self._map(s, [EvalJob(params=s.down.ref, row=0, start=a, stop=b)
                                for a, b in slices])
        if not all(isinstance(r, dict) for r in replies):
            log.warning("evaluation on the workers failed (%s); evaluating in the server",
                        [r for r in replies if not isinstance(r, dict)])
            return None
        return combine(cast(list[Mapping[str, Mean]], replies))

    def close(self) -> None:
        """Stop the workers and remove the shared files; a later fit starts afresh."""
        if self._session is not None:
            session, self._session = self._session, None
            session.close()

    def __enter__(self) -> ProcessFleet:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
