"""Persistent worker processes that answer small job messages, replacing any that die.

Each worker is started once, from a fork server that has already imported torch and fedloom
(:mod:`fedloom.core.forking`; ``spawn`` where there is no fork server: both are safe with CUDA
and OpenMP, since the server never computes), builds its handler with ``factory(index,
device)`` and then loops: receive a job over its own pipe, run it, send the reply. ``fedloom
run`` starts the server before it imports torch, so that the two import side by side; the pool
does not wait for its workers either: ``map`` sends
jobs to each worker as soon as it is ready. Jobs are handed out one at a time to whichever
worker is free (dynamic assignment), so the parent always knows which job each worker holds:
when a worker dies, its job's reply is a :class:`WorkerLost` naming the exit code or signal, a
fresh worker takes its place and the other jobs go on. Workers ignore Ctrl-C; the parent stops
them on ``close``, on garbage collection and at interpreter exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
import traceback
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

import torch

from fedloom.core.allocator import keep_freed_memory
from fedloom.core.errors import ClientError
from fedloom.core.forking import PRELOAD, start_fork_server, worker_context
from fedloom.fleets.pools import HandlerFactory, WorkerLost, run_job

log = logging.getLogger(__name__)

__all__ = ["PRELOAD", "ProcessPool", "start_fork_server", "worker_context", "worker_main"]


def worker_main(index: int, device: str, threads: int, factory: HandlerFactory,
                conn: Connection) -> None:
    """A worker's whole life: build the handler, then answer jobs until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    torch.set_num_threads(threads)
    keep_freed_memory()
    try:
        handler = factory(index, device)
    except BaseException:
        conn.send(("error", traceback.format_exc(), (0.0, 0.0)))
        return
    conn.send(("ready", None, (0.0, 0.0)))
    try:
        while (msg := conn.recv()) is not None:
            tag, job = msg
            start, cpu = time.perf_counter(), time.process_time()
            reply = run_job(handler, job)
            conn.send((tag, reply, (time.perf_counter() - start, time.process_time() - cpu)))
    except (EOFError, BrokenPipeError):  # the parent is gone
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skips tearing down torch's modules (~0.5 s); nothing is left to flush


@dataclass(slots=True)
class _Worker:
    index: int
    proc: BaseProcess
    conn: Connection
    ready: bool = False
    job: tuple[int, int] | None = None  # (map tag, job index) in flight
    busy: tuple[float, float] = (0.0, 0.0)  # wall and CPU seconds in the handler this map


def _why(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by signal {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _shutdown(workers: list[_Worker], owner: int) -> None:
    if os.getpid() != owner:  # a fork of the parent exiting: not its workers to stop
        return
    for w in workers:
        if w.ready and w.job is None:
            with contextlib.suppress(OSError):
                w.conn.send(None)
        else:  # mid-job or still starting: do not wait for it
            w.proc.terminate()
    deadline = time.monotonic() + 5.0
    for w in workers:
        w.proc.join(max(0.0, deadline - time.monotonic()))
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join()
        w.conn.close()
    workers.clear()


class ProcessPool:
    """``workers`` processes, each with its own handler; see the module docstring.

    ``busy`` holds, per worker, the (wall, CPU) seconds its handler spent on the last ``map``.
    """

    def __init__(self, factory: HandlerFactory, *, workers: int, devices: Sequence[str],
                 threads: int) -> None:
        self.workers = workers
        self._ctx = worker_context()
        self._start_args = (factory, list(devices), threads)
        self._tag = 0
        self._list: list[_Worker] = []
        self._close = weakref.finalize(self, _shutdown, self._list, os.getpid())
        self.busy = [(0.0, 0.0)] * workers
        try:  # not waiting for them: they become ready while the caller goes on
            self._list.extend(self._start(i) for i in range(workers))
        except BaseException:
            self.close()
            raise

    def _start(self, index: int) -> _Worker:
        factory, devices, threads = self._start_args
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=worker_main, name=f"fedloom-worker-{index}",
                                 args=(index, devices[index % len(devices)], threads, factory,
                                       child), daemon=True)
        proc.start()
        child.close()  # only the worker holds its end: its death is EOF here
        return _Worker(index, proc, parent)

    def map(self, jobs: Sequence[object]) -> list[object]:
        """One reply per job, in order: the handler's, a JobError or a WorkerLost."""
        self._tag += 1
        pending = deque(range(len(jobs)))
        out: dict[int, object] = {}
        for w in self._list:
            w.busy = (0.0, 0.0)
        while len(out) < len(jobs):
            for w in self._list:
                if w.ready and w.job is None and pending:
                    self._send(w, pending.popleft(), jobs)
            self._serve(out)
        self.busy = [w.busy for w in sorted(self._list, key=lambda w: w.index)]
        return [out[i] for i in range(len(jobs))]

    def _send(self, w: _Worker, index: int, jobs: Sequence[object]) -> None:
        w.job = (self._tag, index)
        with contextlib.suppress(OSError):  # a dead worker is noticed by _serve
            w.conn.send((self._tag, jobs[index]))

    def _serve(self, out: dict[int, object]) -> None:
        """Wait for messages or deaths; file replies of this map's jobs into ``out``."""
        ready = set(wait([w.conn for w in self._list] + [w.proc.sentinel for w in self._list]))
        for w in list(self._list):
            dead = w.proc.sentinel in ready
            if w.conn in ready:
                try:
                    while w.conn.poll():
                        self._receive(w, w.conn.recv(), out)
                except (EOFError, OSError):
                    dead = True
            if dead:
                self._replace(w, out)

    def _receive(self, w: _Worker, msg: tuple[object, object, tuple[float, float]],
                 out: dict[int, object]) -> None:
        tag, reply, seconds = msg
        if tag == "error":
            raise ClientError(f"worker {w.index} could not start:\n{reply}", stage="worker")
        if tag == "ready":
            w.ready = True
        elif w.job is not None:
            if w.job[0] == tag == self._tag:  # replies of an interrupted map are dropped
                out[w.job[1]] = reply
                w.busy = (w.busy[0] + seconds[0], w.busy[1] + seconds[1])
            w.job = None

    def _replace(self, w: _Worker, out: dict[int, object]) -> None:
        w.proc.join()
        why = f"worker {w.index} (pid {w.proc.pid}) {_why(w.proc.exitcode)}"
        if not w.ready:
            raise ClientError(f"{why} while starting (its traceback is above): a script "
                              f"needs an `if __name__ == '__main__':` guard, and model_fn and "
                              f"hooks must be importable (not defined in a notebook)",
                              stage="worker")
        log.warning("%s; starting a new one", why)
        if w.job is not None and w.job[0] == self._tag:
            out[w.job[1]] = WorkerLost(why)
        w.conn.close()
        self._list[self._list.index(w)] = self._start(w.index)

    def close(self) -> None:
        self._close()
