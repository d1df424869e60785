"""Pools of workers that run jobs: inline, on threads, or in processes (:mod:`.procpool`).

A pool builds one handler per worker with ``factory(worker_index, device)`` (devices are dealt
round-robin) and answers ``map(jobs)`` with one reply per job, in job order. A handler that raises
gives a :class:`JobError` reply; a worker process that dies gives :class:`WorkerLost`. The process
and thread fleets and :class:`fedloom.fleets.blazefl.ClientRunner` are all built on these.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import torch

Handler = Callable[[object], object]
HandlerFactory = Callable[[int, str], Handler]


@dataclass(frozen=True, slots=True)
class JobError:
    """A handler raised instead of replying: the exception, as text."""

    message: str


@dataclass(frozen=True, slots=True)
class WorkerLost:
    """The worker process running the job died (exit code or signal in the message)."""

    message: str


class Pool(Protocol):
    workers: int

    def map(self, jobs: Sequence[object]) -> list[object]: ...

    def close(self) -> None: ...


def run_job(handler: Handler, job: object) -> object:
    try:
        return handler(job)
    except Exception as exc:  # a broken job is a reply; the worker goes on
        return JobError(f"{type(exc).__name__}: {exc}")


class InlinePool:
    """One handler in the calling thread: the serial reference. Like :class:`ThreadPool`, it
    sets torch's thread count to ``threads`` while open, so both compute the same bits."""

    workers = 1

    def __init__(self, factory: HandlerFactory, devices: Sequence[str], threads: int) -> None:
        self._saved_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        self.handler = factory(0, devices[0])

    def map(self, jobs: Sequence[object]) -> list[object]:
        return [run_job(self.handler, job) for job in jobs]

    def close(self) -> None:
        torch.set_num_threads(self._saved_threads)


class ThreadPool:
    """``workers`` threads, each with its own handler, built on first use in that thread.

    torch's thread count is process-global: the pool sets it to ``threads`` while it is open
    and restores it on ``close``.
    """

    def __init__(self, factory: HandlerFactory, *, workers: int, devices: Sequence[str],
                 threads: int) -> None:
        self.workers = workers
        self.factory = factory
        self.devices = list(devices)
        self.threads = threads
        self._local = threading.local()
        self._count = itertools.count()
        self._saved_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="fedloom-worker")

    def _run(self, job: object) -> object:
        handler: Handler | None = getattr(self._local, "handler", None)
        if handler is None:
            torch.set_num_threads(self.threads)  # this thread's OpenMP setting, too
            index = next(self._count)
            handler = self._local.handler = self.factory(index,
                                                          self.devices[index % len(self.devices)])
        return run_job(handler, job)

    def map(self, jobs: Sequence[object]) -> list[object]:
        return list(self._executor.map(self._run, jobs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        torch.set_num_threads(self._saved_threads)
