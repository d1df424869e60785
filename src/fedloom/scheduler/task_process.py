"""Both ends of a task process: :func:`task_main` runs in it, :class:`TaskProcess` is the
parent's handle on it (held by :meth:`Task.start <fedloom.scheduler.task.Task.start>`).

The parent starts :func:`task_main` with the pickled task and one end of a pipe, then sends
commands, each answered by the process (child -> parent messages are the frozen dataclasses
below)::

    (started)            -> Started()           task_main runs: the import of the script is done
    ("load",)            -> Loaded() | Failed(stage=load, ...)
    ("train", device)    -> Finished(result, peak_memory) | Failed(stage=train, ...)
    ("exit",)            the process exits (also while it trains)

When the parent goes away (even by SIGKILL) the pipe closes and the process exits at once, so
no orphan keeps training a task that a resumed scheduler will start again.

A script without an ``if __name__ == "__main__":`` guard runs again in every task process (the
process imports the script to find the task's class). When that second run reaches a scheduler
or a task's ``start()``, :func:`exit_if_importing_main` ends the process with
:data:`NO_MAIN_GUARD` before it touches anything, and :func:`death_message` says so plainly.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkServerContext, SpawnContext
from pathlib import Path
from types import FrameType
from typing import IO, cast

from fedloom.scheduler.task import Result, Stage, Task, TaskStatus

#: Exit status of a task process whose parent went away.
ORPHANED = 75
#: Exit status of a task process that found itself running the user's script again.
NO_MAIN_GUARD = 76

_OOM_NEEDLES = ("out of memory", "cudnn_status_not_enough_memory", "cublas_status_alloc_failed")


@dataclass(frozen=True, slots=True, kw_only=True)
class Started:
    """The process runs :func:`task_main`: it got past importing the user's script."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Loaded:
    """``load()`` returned; the process waits for a device."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished:
    result: Result
    peak_memory: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed:
    stage: Stage
    error: str
    traceback: str
    out_of_memory: bool


Event = Started | Loaded | Finished | Failed


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


# --- a script without a main guard -----------------------------------------------------------

def no_main_guard_message() -> str:
    """What is wrong when a task process ran the user's script again, in plain words."""
    # a task process runs the script as __mp_main__; __main__ is the script only once it ran
    main = sys.modules.get("__mp_main__") or sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    which = f"the script {script}" if script else "the script that runs the scheduler"
    return (f"{which} has no `if __name__ == \"__main__\":` guard: every task process imports "
            "the script first (multiprocessing's spawn and forkserver do), so each one ran the "
            "script again instead of its task. Put the code that builds and runs the Scheduler "
            "(or starts tasks) under `if __name__ == \"__main__\":`")


def exit_if_importing_main() -> None:
    """End this process with :data:`NO_MAIN_GUARD` when it is a task process still importing
    the user's script (multiprocessing's own test for starting a process while bootstrapping):
    the script is starting a scheduler or a task again, which must not touch the state."""
    if getattr(mp.current_process(), "_inheriting", False):
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"fedloom: {no_main_guard_message()}\n")
            sys.stderr.flush()
        os._exit(NO_MAIN_GUARD)


def signal_name(number: int) -> str:
    """A signal's name (``SIGKILL``) from its number."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def death_stage(status: TaskStatus, *, started: bool) -> Stage:
    """Where a task whose process died failed: dispatch when the process never ran the task."""
    if not started:
        return Stage.DISPATCH
    return Stage.TRAIN if status is TaskStatus.TRAINING else Stage.LOAD


def death_message(code: int | None, *, started: bool, workdir: Path | None) -> str:
    """Why a task process that exited without an outcome failed its task."""
    if code == NO_MAIN_GUARD and not started:
        return no_main_guard_message()
    died = f"the task's process died with exit code {code}" + (
        f" ({signal_name(-code)})" if code is not None and code < 0 else "")
    if not started:
        return (f"{died} while starting, before it ran the task: every task process imports "
                "the user's script first, so a script that fails on import, or one without an "
                "`if __name__ == \"__main__\":` guard, ends here; its error went to the "
                "scheduler's stderr")
    return f"{died}; its output is in {workdir}/task.log"


# --- the task's end ----------------------------------------------------------------------------

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


def _command(conn: Connection) -> tuple[object, ...]:
    """The parent's next command; a closed pipe means it is gone, and so is this process."""
    try:
        command = conn.recv()
    except (EOFError, OSError):
        os._exit(ORPHANED)
    if command[0] == "exit":
        sys.stdout.flush()
        os._exit(0)
    return cast(tuple[object, ...], command)


def _exit_when_told(conn: Connection) -> None:
    """While the task trains: any command (exit) or a closed pipe ends the process."""
    _command(conn)
    os._exit(0)


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _takes_device(train: Callable[..., object]) -> bool:
    try:
        params = inspect.signature(train).parameters.values()
    except (TypeError, ValueError):  # no signature to read: pass the device
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in params)


def run_train(task: Task, device: str) -> Result:
    """Set ``task.device`` to ``device`` and train: ``train(device)`` (fedloom, and Fedflow since
    0.2.0's examples) or ``train()`` (Fedflow's first form, which reads ``self.device``). The
    result must be a JSON-ready mapping; None counts as ``{}`` (a task that only writes files).
    """
    task.device = device
    if _takes_device(task.train):
        raw: object = task.train(device)
    else:
        raw = cast(Callable[[], object], task.train)()
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise TypeError(f"train() must return a JSON-ready mapping (or None), got "
                        f"{type(raw).__name__}")
    result = dict(raw)
    try:
        json.dumps(result)
    except (TypeError, ValueError) as err:
        raise TypeError(f"train() must return a JSON-ready mapping: {err}") from None
    return result


def task_main(payload: bytes, conn: Connection, workdir: str, threads: int | None) -> None:
    """Entry point of a task process (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the scheduler's to handle
    _redirect_output(Path(workdir) / "task.log")
    conn.send(Started())
    _set_threads(threads)
    stage = Stage.LOAD
    try:
        task = pickle.loads(payload)
        if not isinstance(task, Task):
            raise TypeError(f"expected a Task, got {type(task).__name__}")
        task.workdir = Path(workdir)
        _command(conn)  # load
        task.load()
        conn.send(Loaded())
        device = str(_command(conn)[1])  # ("train", device)
        threading.Thread(target=_exit_when_told, args=(conn,), daemon=True).start()
        stage = Stage.TRAIN
        result = run_train(task, device)
        conn.send(Finished(result=result, peak_memory=task.peak_memory()))
    except BaseException as err:  # everything a task raises is reported, with its stage
        traceback.print_exc()
        conn.send(Failed(stage=stage, error=_describe(err), traceback=traceback.format_exc(),
                         out_of_memory=stage is Stage.TRAIN and is_out_of_memory(err)))
    finally:
        sys.stdout.flush()


# --- the parent's end --------------------------------------------------------------------------

def default_start_method() -> str:
    """``forkserver`` where available (tasks start in milliseconds, CUDA never initialised in
    the server), else ``spawn``."""
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def _context(method: str, preload: Sequence[str]) -> SpawnContext | ForkServerContext:
    if method == "spawn":
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))  # used when this process starts its server
    return ctx


class TaskProcess:
    """The parent's end: starts :func:`task_main` for a pickled task (``method``: forkserver
    or spawn), sends it commands, and reads what it says."""

    def __init__(self, payload: bytes, *, name: str, workdir: Path, threads: int | None,
                 method: str, preload: Sequence[str]) -> None:
        ctx = _context(method, preload)
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=task_main, name=name,
                                   args=(payload, child, str(workdir), threads))
        self.process.start()
        child.close()
        self.open = True  # the pipe has not reached its end yet
        self.started = False  # the process said Started

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def handles(self) -> list[Connection | int]:
        """What to wait on: the pipe (messages) and the process sentinel (exit)."""
        return [self.conn, self.process.sentinel] if self.open else [self.process.sentinel]

    def messages(self, ready: Sequence[object]) -> Iterator[Event]:
        """Every message waiting, when the pipe or the process was among the ``ready``."""
        if not self.open or (self.conn not in ready and self.process.sentinel not in ready):
            return
        while True:
            try:
                if not self.conn.poll():
                    return
                event = self.conn.recv()
            except (EOFError, OSError):
                self.open = False
                return
            self.started = self.started or isinstance(event, Started)
            yield event

    def poll(self, timeout: float | None) -> tuple[list[Event], bool]:
        """Wait up to ``timeout`` s for messages or the exit: (the messages, whether it exited)."""
        ready = wait(self.handles(), timeout)
        return list(self.messages(ready)), self.exited(ready)

    def exited(self, ready: Sequence[object]) -> bool:
        return self.process.sentinel in ready

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def _send(self, *command: object) -> None:
        with contextlib.suppress(OSError):  # a process that died is reported by its sentinel
            self.conn.send(command)

    def load(self) -> None:
        self._send("load")

    def train(self, device: str) -> None:
        self._send("train", device)

    def join(self) -> int | None:
        """Wait for the exit (after :meth:`exited` or :meth:`kill`); the exit code."""
        self.process.join()
        self.conn.close()
        return self.process.exitcode

    def exit(self, timeout: float) -> int | None:
        """Tell the process to exit, kill it if it has not after ``timeout`` s; the exit code."""
        if not self.conn.closed:
            self._send("exit")
        self.process.join(timeout)
        if self.process.is_alive():
            self.kill()
        return self.join()

    def kill(self) -> None:
        self.process.kill()


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
