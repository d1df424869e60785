"""The TensorBoard sink: every row's numbers read back from the event files, exactly."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from fedloom.core.errors import ConfigError
from fedloom.runtime.sinks import (
    TENSORBOARD_DIR,
    JsonlSink,
    Row,
    SinkName,
    TensorBoardSink,
    file_sinks,
)
from tests.tensorboard_events import expected_scalars, read_scalars

pytest.importorskip("tensorboard")


def test_every_number_of_every_row_at_its_round(tmp_path: Path) -> None:
    rows: list[Row] = [
        {"round": 1, "test_accuracy": 0.8125, "train_loss": 1 / 3, "bytes_up": 2**40 + 1,
         "num_failures": 0, "algorithm": "fedavg", "test_loss": None},
        {"round": 2, "test_accuracy": None, "train_loss": 0.1, "bytes_up": 12, "num_failures": 2},
        {"round": 2, "level": 1, "node": "edge-a", "train_loss": 0.25},  # below the root
        {"round": 2, "level": 1, "node": "edge-b", "node_round": 3, "train_loss": 0.5},
        {"round": 2, "level": 1, "node": "edge-b", "node_round": 4, "train_loss": 0.75},
    ]
    sink = TensorBoardSink(tmp_path / "tb")
    for row in rows:
        sink.log(row)
    got = read_scalars(tmp_path / "tb")  # flushed per row: readable before close
    sink.close()
    assert got == {
        "test_accuracy": {1: 0.8125},
        "train_loss": {1: 1 / 3, 2: 0.1},  # double precision: the row's exact numbers
        "bytes_up": {1: float(2**40 + 1), 2: 12.0},
        "num_failures": {1: 0.0, 2: 2.0},
        "edge-a/train_loss": {2: 0.25},
        "edge-b/train_loss": {3: 0.5, 4: 0.75},  # at the node's own rounds
    }
    assert got == expected_scalars(rows)


def test_non_finite_values_are_written_as_they_are(tmp_path: Path) -> None:
    sink = TensorBoardSink(tmp_path)
    sink.log({"round": 3, "train_loss": math.inf, "test_loss": math.nan})
    sink.close()
    got = read_scalars(tmp_path)
    assert got["train_loss"] == {3: math.inf} and math.isnan(got["test_loss"][3])


def test_a_resumed_run_replaces_the_rounds_after_its_checkpoint(tmp_path: Path) -> None:
    first = TensorBoardSink(tmp_path)
    for rnd in (1, 2, 3, 4):
        first.log({"round": rnd, "train_loss": float(rnd)})
    first.close()  # killed after round 4, last checkpoint after round 2
    resumed = TensorBoardSink(tmp_path, purge_after=2)
    for rnd in (3, 4, 5):
        resumed.log({"round": rnd, "train_loss": 10.0 * rnd})
    resumed.close()
    assert read_scalars(tmp_path) == {"train_loss": {1: 1.0, 2: 2.0, 3: 30.0, 4: 40.0,
                                                     5: 50.0}}


def test_file_sinks_always_write_jsonl_and_tensorboard_when_named(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    plain = file_sinks(tmp_path / "a")
    assert [type(s) for s in plain] == [JsonlSink]
    both = file_sinks(tmp_path / "a", [SinkName.JSONL, SinkName.TENSORBOARD])
    assert [type(s) for s in both] == [JsonlSink, TensorBoardSink]
    for sink in [*plain, *both]:
        sink.log({"round": 1, "test_accuracy": 0.5})
        sink.close()
    assert read_scalars(tmp_path / "a" / TENSORBOARD_DIR) == {"test_accuracy": {1: 0.5}}


def test_without_the_package_the_error_says_how_to_install(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"sinks: tensorboard needs the tensorboard package: "
                       r"pip install 'fedloom\[tensorboard\]'"):
        file_sinks(tmp_path, [SinkName.JSONL, SinkName.TENSORBOARD])
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing opened before the error
