"""BlazeFL's FedAvg quickstart, ported with only its imports changed, runs on fedloom."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedloom import DataError
from fedloom.data.mnist import load_idx_dataset

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "blazefl_quickstart"


def quickstart(tmp_path: Path, *args: str) -> list[dict[str, float]]:
    metrics = tmp_path / "metrics.jsonl"
    small = ["--num-clients", "4", "--num-shards", "8", "--global-round", "2", "--epochs", "1",
             "--num-parallels", "2", "--max-samples", "1000", "--batch-size", "50",
             "--metrics", str(metrics), "--share-dir-base", str(tmp_path / "share"),
             "--state-dir-base", str(tmp_path / "state"),
             "--split-dir-base", str(tmp_path / "split")]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "main.py", *small, *args], cwd=EXAMPLE, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "done!" in done.stdout
    return [json.loads(line) for line in metrics.read_text().splitlines()]


@pytest.mark.integration
def test_the_quickstart_gives_the_same_rounds_through_files_and_shared_memory(
        tmp_path: Path) -> None:
    try:
        load_idx_dataset("mnist", None)
    except DataError as err:
        pytest.skip(f"MNIST is not here: {err}")
    storage = quickstart(tmp_path / "a", "--execution-mode", "multi-process",
                         "--ipc-mode", "STORAGE")
    shared = quickstart(tmp_path / "b", "--execution-mode", "multi-process",
                        "--ipc-mode", "SHARED_MEMORY")
    assert [row["round"] for row in storage] == [0, 1]
    assert storage == shared
    assert all(0.0 <= row["server_acc"] <= 1.0 and row["server_loss"] > 0 for row in storage)
