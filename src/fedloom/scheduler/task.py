"""Tasks: what the scheduler runs, each in its own subprocess and work dir.

A task goes through ``waiting -> loading -> loaded -> training -> finished | failed``. ``load()``
runs first, on the CPU with no device (read data, build the model); the scheduler then hands the
task a device and calls ``train(device)``, whose returned mapping is the task's result. Both run
in the task's own subprocess, so the object the user holds is never touched by them: the
scheduler copies the outcome (status, result, failure stage and traceback) back onto it.

Example:
    >>> class Square(Task):
    ...     def train(self, device: str) -> dict[str, object]:
    ...         return {"value": int(self.task_id.split("-")[1]) ** 2}
    >>> Square("square-3").status
    <TaskStatus.WAITING: 'waiting'>
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path

from fedloom.core.errors import ConfigError, FedloomError

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
        memory: GPU memory the task needs, in bytes; None: learned from the first task of its
            group (which then runs with a GPU to itself).

    Attributes set by the scheduler in the parent process: ``workdir`` (at start), ``status``,
    ``used_device``, ``attempts``, ``result`` (after it finished), ``stage``, ``error``,
    ``traceback`` and ``exit_code`` (after it failed).
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

    def load(self) -> None:  # noqa: B027 (an optional hook: not every task has a CPU phase)
        """The CPU phase, before a device is assigned (read data, build the model)."""

    @abc.abstractmethod
    def train(self, device: str) -> Mapping[str, object]:
        """Do the work on ``device``; the returned JSON-ready mapping becomes ``result``."""

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


#: What a CUDA context costs on top of the tensors torch reports (measured NVML - torch peak).
CUDA_CONTEXT_BYTES = 512 << 20
