"""The live table of a running scheduler: status, device, round and accuracy of every task.

Rendered by rich from its own refresh thread, so the scheduler loop stays event-driven. The
round and accuracy come from each running task's :meth:`~fedloom.scheduler.task.Task.progress`
(a sweep task reads the last row of its ``metrics.jsonl``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING

from fedloom.scheduler.task import Task, TaskStatus

if TYPE_CHECKING:
    from rich.console import RenderableType

    from fedloom.scheduler.scheduler import Scheduler

#: Most task rows shown; the rest are summed up in the caption.
MAX_ROWS = 30

_STYLE = {TaskStatus.WAITING: "dim", TaskStatus.LOADING: "cyan", TaskStatus.LOADED: "cyan",
          TaskStatus.TRAINING: "yellow", TaskStatus.FINISHED: "green", TaskStatus.FAILED: "red"}
_ORDER = {TaskStatus.TRAINING: 0, TaskStatus.LOADED: 1, TaskStatus.LOADING: 2,
          TaskStatus.FAILED: 3, TaskStatus.WAITING: 4, TaskStatus.FINISHED: 5}


def _cell(value: object, fmt: str = "") -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, (int, float)):
        return format(value, fmt)
    return str(value)


class LiveTable:
    """A context manager showing ``scheduler``'s tasks while it runs."""

    def __init__(self, scheduler: Scheduler, *, refresh_per_second: float = 2.0) -> None:
        from rich.console import Console
        from rich.live import Live

        self.scheduler = scheduler
        self.live = Live(get_renderable=self.render, console=Console(stderr=True),
                         refresh_per_second=refresh_per_second, transient=False)

    def _row(self, task: Task, group: str | None) -> list[str]:
        shown = task.progress() if task.status.active or task.status is TaskStatus.FINISHED \
            else {}
        since = self.scheduler.started_at.get(task.task_id)
        elapsed = f"{time.time() - since:.0f}s" if since and task.status.active else ""
        cells = [task.task_id, f"[{_STYLE[task.status]}]{task.status.value}",
                 task.used_device or "", _cell(shown.get("round")),
                 _cell(shown.get("accuracy"), ".4f"), str(task.attempts or ""), elapsed]
        return cells if group is None else [cells[0], group, *cells[1:]]

    def render(self) -> RenderableType:
        from rich.table import Table

        groups = list(self.scheduler.groups)
        tasks = [(t, g.name if len(groups) > 1 else None) for g in groups for t in list(g)]
        counts = {s: sum(t.status is s for t, _ in tasks) for s in TaskStatus}
        table = Table(title="fedloom scheduler", caption=", ".join(
            f"{n} {s.value}" for s, n in counts.items() if n), expand=False)
        table.add_column("task", overflow="fold")  # long ids wrap; the numbers never do
        if len(groups) > 1:
            table.add_column("group", overflow="fold")
        for column, width in (("status", 8), ("device", 6), ("round", 5), ("accuracy", 8),
                              ("attempt", 7), ("time", 5)):
            table.add_column(column, justify="left" if column in ("status", "device")
                             else "right", no_wrap=True, min_width=width)
        shown = sorted(tasks, key=lambda tg: _ORDER[tg[0].status])[:MAX_ROWS]
        for task, group in shown:
            table.add_row(*self._row(task, group))
        if len(tasks) > len(shown):
            table.add_row(f"... {len(tasks) - len(shown)} more")
        return table

    def __enter__(self) -> LiveTable:
        self.live.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.live.stop()
        self.live.console.line()


@contextlib.contextmanager
def shown(scheduler: Scheduler, enabled: bool) -> Iterator[None]:
    """The live table of ``scheduler`` while in the block, when ``enabled``."""
    if not enabled:
        yield
        return
    with LiveTable(scheduler):
        yield
