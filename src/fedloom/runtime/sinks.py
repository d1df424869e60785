"""Where per-round metrics go: JSONL (the source of truth), TensorBoard and the console.

A run directory always gets ``metrics.jsonl``; ``sinks: [jsonl, tensorboard]`` in a run config
adds TensorBoard event files under ``RUN_DIR/tensorboard`` (:func:`file_sinks`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from fedloom.core.errors import ConfigError

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

Row = dict[str, float | int | str | None]

#: a run directory's TensorBoard event files: ``tensorboard --logdir RUN_DIR/tensorboard``
TENSORBOARD_DIR = "tensorboard"


class Sink(Protocol):
    def log(self, row: Row) -> None: ...

    def close(self) -> None: ...


def _jsonable(value: float | int | str | None) -> float | int | str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class SinkName(StrEnum):
    JSONL = "jsonl"  # RUN_DIR/metrics.jsonl: always written, the source of truth
    TENSORBOARD = "tensorboard"  # RUN_DIR/tensorboard: event files (the `tensorboard` extra)


def file_sinks(out: Path, names: Iterable[SinkName] = (), *,
               resumed_after: int = 0) -> list[Sink]:
    """The sinks writing a run directory: ``metrics.jsonl`` always, TensorBoard when named.

    ``resumed_after``: the step (:func:`row_step`) a resumed run continues after (TensorBoard
    then discards what an earlier run wrote for later steps, as ``metrics.jsonl`` was cut back).
    """
    sinks: list[Sink] = []
    if SinkName.TENSORBOARD in names:
        sinks.append(TensorBoardSink(out / TENSORBOARD_DIR, purge_after=resumed_after))
    return [JsonlSink(out / "metrics.jsonl"), *sinks]


class JsonlSink:
    """Appends one JSON object per round and flushes it, so a killed run keeps its rounds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def log(self, row: Row) -> None:
        self._file.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def top_rows(rows: list[Row]) -> list[Row]:
    """The run's own rows: a hierarchy also writes one per round of each aggregator below the
    root (``level`` > 0)."""
    return [r for r in rows if not r.get("level")]


def read_rows(path: Path) -> list[Row]:
    """The rows of a ``metrics.jsonl`` ([] when missing); a line being written is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def row_step(row: Row) -> int | None:
    """A row's TensorBoard step: its ``round``, or for an aggregator below a hierarchy's root
    its own round count (``node_round``) where the row has one."""
    step = row.get("node_round") if row.get("level") else None
    step = row.get("round") if step is None else step
    return step if isinstance(step, int) and not isinstance(step, bool) else None


class TensorBoardSink:
    """Every row as TensorBoard scalars at its :func:`row_step`: each numeric value under its
    metrics.jsonl key (rows of an aggregator below a hierarchy's root under ``NODE/key``), in
    double precision so the event file holds the row's exact numbers. Flushed per row.
    ``purge_after``: the round a resumed run continues after; TensorBoard then shows this
    writer's rows for the rounds after it, not an earlier writer's.

    Uses ``torch.utils.tensorboard.SummaryWriter`` (the ``tensorboard`` extra: pip install
    'fedloom[tensorboard]'), imported only here.
    """

    def __init__(self, log_dir: Path, *, purge_after: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("sinks: tensorboard needs the tensorboard package: pip install "
                              "'fedloom[tensorboard]'") from None
        self.log_dir = log_dir
        # every writer starts a session at its first round: TensorBoard ignores a log's first
        # start, and on each later one drops what earlier writers logged from that round on
        self._writer: SummaryWriter = SummaryWriter(log_dir=str(log_dir),
                                                    purge_step=purge_after + 1)

    def log(self, row: Row) -> None:
        step = row_step(row)
        if step is None:
            return
        prefix = f"{row.get('node')}/" if row.get("level") else ""
        for key, value in row.items():
            if key in ("round", "level", "node_round") or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                self._writer.add_scalar(prefix + key, value, global_step=step, new_style=True,
                                        double_precision=True)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class ConsoleSink:
    """A progress bar over rounds and one line per evaluated round (rich)."""

    def __init__(self, rounds: int, title: str = "training", done: int = 0) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.task = self.progress.add_task(title, total=rounds, completed=done, status="")
        self.progress.start()

    def log(self, row: Row) -> None:
        if row.get("level", 0):  # an aggregator below the root: the bar counts root rounds
            return
        acc = row.get("test_accuracy")
        parts = [f"round {row['round']:>4}"]
        for key, label, fmt in (("test_accuracy", "acc", ".4f"), ("test_loss", "loss", ".4f"),
                                ("train_loss", "train_loss", ".4f"),
                                ("round_seconds", "s", ".2f")):
            value = row.get(key)
            if isinstance(value, (int, float)):
                parts.append(f"{label} {value:{fmt}}")
        if row.get("num_failures"):
            parts.append(f"failures {row['num_failures']}")
        if acc is not None:
            self.progress.console.print("  ".join(parts))
        status = f"acc {acc:.4f}" if isinstance(acc, float) else ""
        self.progress.update(self.task, advance=1, status=status)

    def close(self) -> None:
        self.progress.stop()
