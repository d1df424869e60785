"""Task groups: run one after another, their tasks in parallel up to the scheduler's limits.

The names are Fedflow's: ``group_name`` (``name`` is an alias), ``index`` (the place in the
run, given by the scheduler), ``workdir`` (given when the group runs), ``result`` (each done
task's outcome, for the report), ``report_finish`` / ``report_exception``, ``finished()``,
``retrieve_task(status)`` and ``get_task(task_id)`` (None for an unknown id).

Example:
    >>> from fedloom.scheduler.task import Task
    >>> class Noop(Task):
    ...     def train(self, device: str) -> dict[str, object]:
    ...         return {}
    >>> group = TaskGroup("warmup")
    >>> _ = group.add_task(Noop("a")); _ = group.add_task(Noop("b"))
    >>> [t.task_id for t in group], group.get_task("b").status.value, group.get_task("c")
    (['a', 'b'], 'waiting', None)
    >>> group.report_finish("a", {"acc": 0.9}); group.finished()
    False
    >>> group.report_exception("b", "train", "loss is nan"); group.finished()
    True
    >>> group.result["a"]
    {'type': 'success', 'data': {'acc': 0.9}}
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

from fedloom.core.errors import ConfigError
from fedloom.scheduler.task import Stage, Task, TaskStatus, check_id


class TaskGroup:
    """An ordered set of tasks with unique ids.

    Args:
        group_name: a safe directory name; None: ``group-{index}``, once the group is added
            to a scheduler. ``name=`` is accepted as well.
        device: pin every task of the group that does not pin its own device.

    Attributes:
        index: the group's place in its scheduler's order (-1 until added to one).
        workdir: ``<root>/_groups/<group_name>``, for files of the group as a whole; set (and
            made) when the scheduler runs the group. The tasks' own work dirs stay
            ``<root>/<task_id>``.
    """

    def __init__(self, group_name: str | None = None, *, device: str | None = None,
                 name: str | None = None) -> None:
        if group_name is not None and name is not None:
            raise ConfigError(f"group_name = {group_name!r}, name = {name!r}: give one (name is "
                              "an alias of group_name)")
        given = group_name if group_name is not None else name
        self._name = None if given is None else check_id(given, "group_name")
        self.device = device
        self.index = -1
        self.workdir: Path | None = None
        self._tasks: dict[str, Task] = {}

    @property
    def group_name(self) -> str:
        """The name given, else ``group-{index}``."""
        if self._name is not None:
            return self._name
        if self.index < 0:
            raise ConfigError("this TaskGroup has no group_name yet: pass one, or add the group "
                              "to a Scheduler, which names it group-{index}")
        return f"group-{self.index}"

    @property
    def name(self) -> str:
        """Alias of :attr:`group_name`."""
        return self.group_name

    def _label(self) -> str:
        return self._name or (f"group-{self.index}" if self.index >= 0 else "(unnamed)")

    def add_task(self, task: Task) -> Task:
        """Add ``task`` (its id must be new to the group); returns it."""
        if task.task_id in self._tasks:
            raise ConfigError(f"task_id = {task.task_id!r}: duplicate task id in group "
                              f"{self._label()}")
        self._tasks[task.task_id] = task
        return task

    def get_task(self, task_id: str) -> Task | None:
        """The task with this id, or None."""
        return self._tasks.get(task_id)

    def retrieve_task(self, status: TaskStatus | str) -> Task | None:
        """A task in ``status`` (a TaskStatus or its value, e.g. ``"loaded"``), picked at
        random; None when no task is."""
        try:
            wanted = TaskStatus(status)
        except ValueError:
            raise ConfigError(f"status = {status!r}: must be one of "
                              f"{', '.join(s.value for s in TaskStatus)}") from None
        matching = [t for t in self._tasks.values() if t.status is wanted]
        return random.choice(matching) if matching else None

    def device_of(self, task: Task) -> str | None:
        """The device ``task`` is pinned to, by itself or by the group."""
        return task.device if task.device is not None else self.device

    @property
    def tasks(self) -> tuple[Task, ...]:
        return tuple(self._tasks.values())

    # --- outcomes ------------------------------------------------------------------------------

    def report_finish(self, task_id: str, data: Mapping[str, object] | None = None) -> None:
        """Record that the task finished with result ``data`` (default ``{}``)."""
        task = self._known(task_id)
        task.status, task.result = TaskStatus.FINISHED, dict(data or {})

    def report_exception(self, task_id: str, stage: Stage | str, message: str) -> None:
        """Record that the task failed in ``stage`` (``load``, ``train`` or ``dispatch``; any
        case) with ``message``."""
        task = self._known(task_id)
        try:
            task.stage = Stage(stage.lower() if isinstance(stage, str) else stage)
        except ValueError:
            raise ConfigError(f"stage = {stage!r}: must be one of "
                              f"{', '.join(s.value for s in Stage)}") from None
        task.status, task.error = TaskStatus.FAILED, message

    @property
    def result(self) -> dict[str, dict[str, object]]:
        """Each finished or failed task's outcome, by task id, in Fedflow's shape:
        ``{"type": "success", "data": result}`` or
        ``{"type": "fail", "data": {"stage": ..., "message": ...}}``."""
        out: dict[str, dict[str, object]] = {}
        for task in self._tasks.values():
            if task.status is TaskStatus.FINISHED:
                out[task.task_id] = {"type": "success", "data": dict(task.result or {})}
            elif task.status is TaskStatus.FAILED:
                stage = task.stage.value if task.stage is not None else None
                out[task.task_id] = {"type": "fail",
                                     "data": {"stage": stage, "message": task.error}}
        return out

    def finished(self) -> bool:
        """Whether every task has finished or failed."""
        return all(t.status in (TaskStatus.FINISHED, TaskStatus.FAILED)
                   for t in self._tasks.values())

    @property
    def failed(self) -> list[Task]:
        return [t for t in self._tasks.values() if t.status is TaskStatus.FAILED]

    @property
    def done(self) -> bool:
        """Same as :meth:`finished` (the name fedloom used first)."""
        return self.finished()

    def counts(self) -> dict[TaskStatus, int]:
        """How many tasks are in each status (every status present, zeros included)."""
        seen = Counter(t.status for t in self._tasks.values())
        return {s: seen.get(s, 0) for s in TaskStatus}

    def _known(self, task_id: str) -> Task:
        task = self._tasks.get(task_id)
        if task is None:
            raise ConfigError(f"task_id = {task_id!r}: no such task in group {self._label()}")
        return task

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        return f"TaskGroup({self._label()!r}, tasks={len(self._tasks)})"
