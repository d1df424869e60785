"""Both ends of a task process: :func:`task_main` runs in it, :class:`TaskProcess` is the
scheduler's handle on it.

The scheduler starts :func:`task_main` with the pickled task and one end of a pipe. The process
loads the task, says ``loaded``, waits for a device, trains, and sends the outcome. Messages
(child -> scheduler)::

    ("loaded",)
    ("finished", result: dict, peak_memory: int | None)
    ("failed", stage: str, message: str, traceback: str, out_of_memory: bool)

The scheduler sends one message, ``("train", device)``. When the scheduler goes away (even by
SIGKILL) the pipe closes and the process exits at once, so no orphan keeps training a task that
a resumed scheduler will start again.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from pathlib import Path
from types import FrameType
from typing import IO

from fedloom.scheduler.task import Stage, Task

#: Exit status of a task process whose scheduler went away.
ORPHANED = 75

_OOM_NEEDLES = ("out of memory", "cudnn_status_not_enough_memory", "cublas_status_alloc_failed")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` (or one it was raised from) is an out-of-memory error: any torch OOM
    type (``torch.OutOfMemoryError``, ``torch.cuda.OutOfMemoryError``), ``MemoryError``, or an
    error whose message says out of memory (``RuntimeError: CUDA error: out of memory``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        names = {cls.__name__ for cls in type(current).__mro__}
        if names & {"OutOfMemoryError", "MemoryError"}:
            return True
        if any(n in str(current).lower() for n in _OOM_NEEDLES):
            return True
        current = current.__cause__ or current.__context__
    return False


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _redirect_output(log_path: Path) -> IO[str]:
    """Send this process's stdout and stderr (also C-level writes) to ``log_path``."""
    log = log_path.open("a", encoding="utf-8", buffering=1)
    for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()
        os.dup2(log.fileno(), fd)
    sys.stdout = sys.stderr = log
    return log


def _exit_when_orphaned(conn: Connection) -> None:
    """Block on the pipe; the scheduler never writes again, so a return means it is gone."""
    with contextlib.suppress(EOFError, OSError):
        conn.recv()
    os._exit(ORPHANED)


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def task_main(payload: bytes, conn: Connection, workdir: str, threads: int | None) -> None:
    """Entry point of a task process (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the scheduler's to handle
    _redirect_output(Path(workdir) / "task.log")
    _set_threads(threads)
    stage = Stage.LOAD
    try:
        task = pickle.loads(payload)
        if not isinstance(task, Task):
            raise TypeError(f"expected a Task, got {type(task).__name__}")
        task.workdir = Path(workdir)
        task.load()
        conn.send(("loaded",))
        try:
            message = conn.recv()
        except (EOFError, OSError):
            os._exit(ORPHANED)
        device = str(message[1])
        threading.Thread(target=_exit_when_orphaned, args=(conn,), daemon=True).start()
        stage = Stage.TRAIN
        result = dict(task.train(device))
        try:
            json.dumps(result)
        except (TypeError, ValueError) as err:
            raise TypeError(f"train() must return a JSON-ready mapping: {err}") from None
        conn.send(("finished", result, task.peak_memory()))
    except BaseException as err:  # everything a task raises is reported, with its stage
        traceback.print_exc()
        conn.send(("failed", stage.value, _describe(err), traceback.format_exc(),
                   stage is Stage.TRAIN and is_out_of_memory(err)))
    finally:
        sys.stdout.flush()


def _context(method: str, preload: Sequence[str]) -> SpawnContext | ForkServerContext:
    if method == "spawn":
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))  # used when this process starts its server
    return ctx


class TaskProcess:
    """The scheduler's end: starts :func:`task_main` for a pickled task (``method``: forkserver
    or spawn), hands it a device, and reads what it says."""

    def __init__(self, payload: bytes, *, name: str, workdir: Path, threads: int | None,
                 method: str, preload: Sequence[str]) -> None:
        ctx = _context(method, preload)
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=task_main, name=name,
                                   args=(payload, child, str(workdir), threads))
        self.process.start()
        child.close()
        self.open = True  # the pipe has not reached its end yet

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def handles(self) -> list[Connection | int]:
        """What to wait on: the pipe (messages) and the process sentinel (exit)."""
        return [self.conn, self.process.sentinel] if self.open else [self.process.sentinel]

    def messages(self, ready: Sequence[object]) -> Iterator[tuple[object, ...]]:
        """Every message waiting, when the pipe or the process was among the ``ready``."""
        if not self.open or (self.conn not in ready and self.process.sentinel not in ready):
            return
        while True:
            try:
                if not self.conn.poll():
                    return
                yield self.conn.recv()
            except (EOFError, OSError):
                self.open = False
                return

    def exited(self, ready: Sequence[object]) -> bool:
        return self.process.sentinel in ready

    def train(self, device: str) -> None:
        with contextlib.suppress(OSError):  # a process that died is reported by its sentinel
            self.conn.send(("train", device))

    def join(self) -> int | None:
        """Wait for the exit (after :meth:`exited` or :meth:`kill`); the exit code."""
        self.process.join()
        self.conn.close()
        return self.process.exitcode

    def kill(self) -> None:
        self.process.kill()


def signal_name(number: int) -> str:
    """A signal's name (``SIGKILL``) from its number."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops a run the way Ctrl-C does (tasks put back, state consistent)."""
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
