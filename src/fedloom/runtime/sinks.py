"""Where per-round metrics go: JSONL (the source of truth) and the console."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import IO, Protocol

Row = dict[str, float | int | str | None]


class Sink(Protocol):
    def log(self, row: Row) -> None: ...

    def close(self) -> None: ...


def _jsonable(value: float | int | str | None) -> float | int | str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
