"""Tasks: what the scheduler runs, each in its own subprocess and work dir.

A task goes through ``waiting -> loading -> loaded -> training -> finished | failed``. ``load()``
runs first, on the CPU with no device (read data, build the model): ``self.device`` is then the
device the task pinned itself to, or None. The scheduler then hands the task a device, sets
``self.device`` to it (``"cuda:1"``, ``"cpu"``) and calls ``train(device)`` (or ``train()``,
Fedflow's first form), whose returned mapping is the task's result. Both run in the task's own
subprocess, so the object the user holds is never touched by them: the scheduler copies the
outcome (status, result, failure stage and traceback) back onto it.

The process control Fedflow's tasks offer is public here too, and is what the scheduler uses:
``start()`` (its process), ``start_load()``, ``start_train(device)``, ``is_alive()``, ``exit()``,
and ``wait()`` for what the process said.

Example:
    >>> class Square(Task):
    ...     def train(self, device: str) -> dict[str, object]:
    ...         return {"value": int(self.task_id.split("-")[1]) ** 2}
    >>> Square("square-3").status
    <TaskStatus.WAITING: 'waiting'>
"""

from __future__ import annotations

import abc
import pickle
import re
import time
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from fedloom.core.errors import ConfigError, FedloomError

if TYPE_CHECKING:
    from fedloom.scheduler.task_process import Event, TaskProcess

#: Longest task id (and group name) accepted: it names a directory.
MAX_ID_LENGTH = 200
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

#: What a task's ``train`` returns and what a progress probe reports (JSON-ready values).
Result = dict[str, object]


class TaskStatus(StrEnum):
    WAITING = "waiting"  # not started, or put back (out of memory, interrupted sweep)
    LOADING = "loading"  # its process runs load()
    LOADED = "loaded"  # loaded, waiting for a device
    TRAINING = "training"  # train(device) is running
    FINISHED = "finished"
    FAILED = "failed"

    @property
    def active(self) -> bool:
        """Whether a process is working on the task."""
        return self in (TaskStatus.LOADING, TaskStatus.LOADED, TaskStatus.TRAINING)


class Stage(StrEnum):
    """Where a task failed."""

    DISPATCH = "dispatch"  # it could not be sent to a process or placed on any device
    LOAD = "load"
    TRAIN = "train"


class SchedulerError(FedloomError):
    """Tasks failed, or the scheduler cannot run (e.g. another scheduler owns the state)."""


def id_problem(value: object) -> str | None:
    """Why ``value`` is not a safe task id / directory name, or None when it is one."""
    if not isinstance(value, str):
        return "must be a string"
    if not value or len(value) > MAX_ID_LENGTH:
        return f"must be 1 to {MAX_ID_LENGTH} characters long"
    if not _SAFE_ID.fullmatch(value):
        return ("is not a safe directory name: use letters, digits, '.', '_' and '-', "
                "starting with a letter or digit")
    return None


def check_id(value: object, key: str = "task_id") -> str:
    """``value`` if it is a safe id, else a ConfigError naming ``key``."""
    problem = id_problem(value)
    if problem is not None:
        raise ConfigError(f"{key} = {value!r}: {problem}")
    assert isinstance(value, str)
    return value


class Task(abc.ABC):
    """One unit of work. Subclass it and implement :meth:`train` (and :meth:`load`).

    Args:
        task_id: unique within a scheduler; names the task's work dir, so it must be a safe
            directory name.
        device: pin the task to a device (``"cpu"``, ``"cuda:1"``, or ``"cuda"`` for any GPU).
            In the task's process, ``train()`` finds the device it got in ``self.device``.
        memory: GPU memory the task needs, in bytes; None: learned from the first task of its
            group (which then runs with a GPU to itself).

    Attributes set by the scheduler in the parent process: ``workdir`` (at start), ``status``,
    ``used_device``, ``attempts``, ``result`` (after it finished), ``stage``, ``error``,
    ``traceback`` and ``exit_code`` (after it failed). ``device`` stays the pin there.
    """

    def __init__(self, task_id: str, *, device: str | None = None,
                 memory: int | None = None) -> None:
        self.task_id = check_id(task_id)
        if memory is not None and memory <= 0:
            raise ConfigError(f"memory = {memory!r}: must be a positive number of bytes or None")
        self.device = device
        self.memory = memory
        self.workdir: Path | None = None
        self.status = TaskStatus.WAITING
        self.used_device: str | None = None
        self.attempts = 0
        self.result: Result | None = None
        self.stage: Stage | None = None
        self.error: str | None = None
        self.traceback: str | None = None
        self.exit_code: int | None = None
        self._process: TaskProcess | None = None

    def load(self) -> None:  # noqa: B027 (an optional hook: not every task has a CPU phase)
        """The CPU phase, before a device is assigned (read data, build the model)."""

    @abc.abstractmethod
    def train(self, device: str) -> Mapping[str, object]:
        """Do the work on ``device`` (also in ``self.device``); the returned JSON-ready mapping
        becomes ``result``. A ``train(self)`` without the argument is called without it."""

    def fingerprint(self) -> str:
        """What identifies this task's work: a resumed run refuses a task whose fingerprint
        changed since it ran (same id, different work). Override when the class alone does not
        say it (a sweep task returns a hash of its run config)."""
        return f"{type(self).__module__}.{type(self).__qualname__}"

    def progress(self) -> Mapping[str, object]:
        """Called in the parent while the task runs, for the live table: e.g. ``round`` and
        ``accuracy`` read from files in ``workdir``. Default: nothing to show."""
        return {}

    def peak_memory(self) -> int | None:
        """Called in the task's process after ``train``: the GPU memory it needed (bytes), which
        sizes the reservations of the rest of its group. Default: torch's peak reservation plus
        the CUDA context, when CUDA was used."""
        import sys

        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_initialized():
            return None
        peak = max(torch.cuda.max_memory_reserved(i) for i in range(torch.cuda.device_count()))
        return int(peak) + CUDA_CONTEXT_BYTES if peak else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.task_id!r}, status={self.status.value})"

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_process"] = None  # the parent's handle stays in the parent
        return state

    # --- process control (Fedflow's names; the scheduler drives tasks through them) ----------

    @property
    def process(self) -> TaskProcess | None:
        """The handle on the task's process, after :meth:`start`."""
        return self._process

    def start(self, workdir: str | Path | None = None, *, threads: int | None = None,
              start_method: str | None = None, preload: Sequence[str] = ()) -> None:
        """Start the task's process (it waits for :meth:`start_load`) in ``workdir`` (default:
        the task's ``workdir``, else ``./<task_id>``), clearing the last outcome.

        Args:
            threads: torch threads in the process (None: torch's default).
            start_method: ``forkserver`` (default where available) or ``spawn``.
            preload: modules a forkserver imports once for every task it starts.
        """
        from fedloom.scheduler.task_process import (
            TaskProcess,
            default_start_method,
            exit_if_importing_main,
        )

        exit_if_importing_main()  # a task process running an unguarded script: stop here
        method = start_method or default_start_method()
        if method not in ("forkserver", "spawn"):
            raise ConfigError(f"start_method = {method!r}: must be forkserver or spawn")
        if self.is_alive():
            raise SchedulerError(f"task {self.task_id!r}: its process already runs; call exit() "
                                 "before starting it again")
        self.workdir = Path(workdir) if workdir is not None else (
            self.workdir or Path.cwd() / self.task_id)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.status, self.used_device = TaskStatus.WAITING, None
        self.stage = self.error = self.traceback = self.result = self.exit_code = None
        try:
            payload = pickle.dumps(self)
        except Exception as err:  # any pickling failure: this task cannot run in a process
            raise SchedulerError(f"task {self.task_id!r} cannot be sent to its process (it must "
                                 f"be picklable, its class importable): {err}") from None
        self._process = TaskProcess(payload, name=f"fedloom-task-{self.task_id}",
                                    workdir=self.workdir, threads=threads,
                                    method=method, preload=preload)

    def start_load(self) -> None:
        """Tell the task's process to run ``load()``."""
        self._require_process("start_load").load()
        self.status = TaskStatus.LOADING

    def start_train(self, device: str) -> None:
        """Tell the task's process to train on ``device`` (after :meth:`start_load`)."""
        if not isinstance(device, str) or not device:
            raise ConfigError(f"device = {device!r}: must be a device name such as 'cpu' or "
                              "'cuda:0'")
        process = self._require_process("start_train")
        if self.status not in (TaskStatus.LOADING, TaskStatus.LOADED):
            raise SchedulerError(f"task {self.task_id!r} is {self.status.value}: start_train() "
                                 "needs a task that loads or has loaded (call start_load())")
        process.train(device)
        self.status, self.used_device = TaskStatus.TRAINING, device

    def is_alive(self) -> bool:
        """Whether the task's process runs."""
        return self._process is not None and self._process.is_alive()

    def exit(self, timeout: float = 5.0) -> None:
        """Stop the task's process (killed after ``timeout`` s); an unfinished task goes back
        to waiting. Nothing to do when it has no process."""
        if self._process is None:
            return
        self._process.exit(timeout)
        self._process = None
        if self.status.active:
            self.status = TaskStatus.WAITING

    def wait(self, timeout: float | None = None) -> TaskStatus:
        """Without a scheduler: wait until the running phase ends (loaded, finished or failed,
        the process dying included) or ``timeout`` s pass; the status."""
        from fedloom.scheduler.task_process import death_message, death_stage

        process = self._require_process("wait")
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.status in (TaskStatus.LOADING, TaskStatus.TRAINING):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            events, exited = process.poll(left)
            for event in events:
                self._apply(event)
            if exited and self.status.active:
                self.exit_code = process.join()
                self.stage = death_stage(self.status, started=process.started)
                self.status = TaskStatus.FAILED
                self.error = death_message(self.exit_code, started=process.started,
                                           workdir=self.workdir)
            if left == 0.0:
                break
        return self.status

    def _apply(self, event: Event) -> None:
        from fedloom.scheduler.task_process import Failed, Finished, Loaded

        if isinstance(event, Loaded) and self.status is TaskStatus.LOADING:
            self.status = TaskStatus.LOADED
        elif isinstance(event, Finished):
            self.status, self.result = TaskStatus.FINISHED, event.result
        elif isinstance(event, Failed):
            self.status, self.stage, self.error = TaskStatus.FAILED, event.stage, event.error
            self.traceback = event.traceback

    def _require_process(self, method: str) -> TaskProcess:
        if self._process is None:
            raise SchedulerError(f"task {self.task_id!r}: {method}() needs its process; call "
                                 "start() first")
        return self._process


#: What a CUDA context costs on top of the tensors torch reports (measured NVML - torch peak).
CUDA_CONTEXT_BYTES = 512 << 20
