"""Partition statistics: the count matrix, the text table, the PNG chart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedloom.core.errors import DataError
from fedloom.data.stats import format_partition_table, label_counts, plot_label_distribution

LABELS = np.array([0, 1, 1, 2, 2, 2, 0])
PARTS = [np.array([0, 1, 2]), np.array([3, 4, 5]), np.array([6])]


def test_label_counts_hand_computed() -> None:
    counts = label_counts(LABELS, PARTS, 4)
    assert counts.tolist() == [[1, 2, 0, 0], [0, 0, 3, 0], [1, 0, 0, 0]]
    assert counts.dtype == np.int64


def test_label_counts_rejects_out_of_range_labels() -> None:
    with pytest.raises(DataError, match=r"outside \[0, 2\)"):
        label_counts(LABELS, PARTS, 2)


def test_table_rows_and_summary() -> None:
    table = format_partition_table(label_counts(LABELS, PARTS, 4))
    lines = table.splitlines()
    assert lines[0].split() == ["client", "total", "|", "0", "1", "2", "3"]
    assert lines[1].split() == ["0", "3", "|", "1", "2", "0", "0"]
    assert lines[3].split() == ["2", "1", "|", "1", "0", "0", "0"]
    assert lines[-1] == (
        "3 clients, 7 examples; client size min/median/max = 1/3/3; "
        "mean labels per client = 1.33"
    )


def test_table_elides_middle_rows() -> None:
    counts = np.arange(50 * 3).reshape(50, 3)
    lines = format_partition_table(counts, max_rows=6).splitlines()
    shown = [line.split()[0] for line in lines[1:-1]]
    assert shown == ["0", "1", "2", "...", "47", "48", "49"]
    assert "(44 clients not shown)" in lines[4]
    assert lines[-1].startswith("50 clients")


def test_plot_writes_a_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, (30, 10))
    path = plot_label_distribution(counts, tmp_path / "plots" / "labels.png", title="test")
    assert path == tmp_path / "plots" / "labels.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000


def test_plot_many_classes(tmp_path: Path) -> None:
    path = plot_label_distribution(np.ones((3, 40), np.int64), tmp_path / "many.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
