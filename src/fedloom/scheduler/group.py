"""Task groups: run one after another, their tasks in parallel up to the scheduler's limits.

Example:
    >>> from fedloom.scheduler.task import Task
    >>> class Noop(Task):
    ...     def train(self, device: str) -> dict[str, object]:
    ...         return {}
    >>> group = TaskGroup("warmup")
    >>> _ = group.add_task(Noop("a")); _ = group.add_task(Noop("b"))
    >>> [t.task_id for t in group], group.get_task("b").status.value
    (['a', 'b'], 'waiting')
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from fedloom.core.errors import ConfigError
from fedloom.scheduler.task import Task, TaskStatus, check_id


class TaskGroup:
    """An ordered set of tasks with unique ids.

    Args:
        name: a safe directory name; None: ``group-{index}``, given when the group is added to
            a scheduler.
        device: pin every task of the group that does not pin its own device.
    """

    def __init__(self, name: str | None = None, *, device: str | None = None) -> None:
        self._name = None if name is None else check_id(name, "name")
        self.device = device
        self._tasks: dict[str, Task] = {}

    @property
    def name(self) -> str:
        if self._name is None:
            raise ConfigError("this TaskGroup has no name yet: pass one, or add the group to a "
                              "Scheduler, which names it group-{index}")
        return self._name

    def _default_name(self, index: int) -> None:
        if self._name is None:
            self._name = f"group-{index}"

    def add_task(self, task: Task) -> Task:
        """Add ``task`` (its id must be new to the group); returns it."""
        if task.task_id in self._tasks:
            raise ConfigError(f"task_id = {task.task_id!r}: duplicate task id in group "
                              f"{self._name or '(unnamed)'}")
        self._tasks[task.task_id] = task
        return task

    def get_task(self, task_id: str) -> Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise KeyError(f"no task {task_id!r} in group {self._name or '(unnamed)'}") from None

    def device_of(self, task: Task) -> str | None:
        """The device ``task`` is pinned to, by itself or by the group."""
        return task.device if task.device is not None else self.device

    @property
    def tasks(self) -> tuple[Task, ...]:
        return tuple(self._tasks.values())

    @property
    def finished(self) -> list[Task]:
        return [t for t in self._tasks.values() if t.status is TaskStatus.FINISHED]

    @property
    def failed(self) -> list[Task]:
        return [t for t in self._tasks.values() if t.status is TaskStatus.FAILED]

    @property
    def done(self) -> bool:
        """Whether every task has finished or failed."""
        return len(self.finished) + len(self.failed) == len(self._tasks)

    def counts(self) -> dict[TaskStatus, int]:
        """How many tasks are in each status (every status present, zeros included)."""
        seen = Counter(t.status for t in self._tasks.values())
        return {s: seen.get(s, 0) for s in TaskStatus}

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        return f"TaskGroup({self._name!r}, tasks={len(self._tasks)})"
