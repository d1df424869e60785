"""The shipped LEAF FEMNIST and CIFAR-10 configs, run for two rounds on tiny generated files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedloom.cli import main
from fedloom.data import cifar10
from tests.data.cifar_files import spec_for, tiny_batches, write_batches
from tests.data.leaf_files import Users, pixels, write_leaf

FAST = ["rounds=2", "cohort.size=2", "client.batch_size=4", "eval.every=1", "--quiet"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDLOOM_OFFLINE", "1")
    monkeypatch.delenv("FEDLOOM_DATA", raising=False)


def femnist(root: Path) -> Path:
    def user(first: int, n: int) -> tuple[list[object], list[object]]:
        return [pixels(s) for s in range(first, first + n)], [s % 62 for s in
                                                              range(first, first + n)]

    train: Users = {f"w{k}": user(10 * k, 3 + k) for k in range(4)}
    test: Users = {f"w{k}": user(10 * k + 7, 2) for k in range(4)}
    return write_leaf(root, train=[train], test=[test])


def rows(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("model", ["mlp", pytest.param("cnn", marks=pytest.mark.slow)])
def test_leaf_femnist_config_runs_two_rounds(tmp_path: Path, model: str) -> None:
    folder = femnist(tmp_path / "femnist")
    out = tmp_path / "run"
    assert main(["run", "configs/fedavg_leaf_femnist.yaml", f"data.leaf_dir={folder}",
                 f"model.name={model}", f"out={out}", *FAST]) == 0
    got = rows(out)
    assert [r["round"] for r in got] == [1, 2]
    accuracy = got[-1]["test_accuracy"]
    assert isinstance(accuracy, float) and 0.0 <= accuracy <= 1.0


@pytest.mark.parametrize("model", [
    ["model.name=cifar_cnn"],
    pytest.param(["model.name=resnet_gn", "model.resnet_depth=8", "fleet.kind=vectorized"],
                 marks=pytest.mark.slow),  # ~35 s on a busy 2-core machine; the fleet agreement
                                           # itself is tests/fleets/test_vectorized_cifar.py
], ids=["cifar_cnn", "resnet_gn-vectorized"])
def test_cifar10_config_runs_two_rounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        model: list[str]) -> None:
    files = tiny_batches(per_file=4)
    write_batches(tmp_path / "data" / "cifar-10-batches-bin", files)
    monkeypatch.setattr(cifar10, "CIFAR10_ARCHIVE", spec_for(files))
    out = tmp_path / "run"
    assert main(["run", "configs/fedavg_cifar10_cnn.yaml", f"data.dir={tmp_path / 'data'}",
                 "data.num_clients=4", "client.epochs=1", *model, f"out={out}", *FAST]) == 0
    assert [r["round"] for r in rows(out)] == [1, 2]


def test_partition_shows_the_leaf_writers(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder = femnist(tmp_path / "femnist")
    plot = tmp_path / "writers.png"
    assert main(["partition", "configs/fedavg_leaf_femnist.yaml", f"data.leaf_dir={folder}",
                 "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert plot.stat().st_size > 1000
    assert "client" in out.lower() and "6" in out  # the largest writer has 6 examples


def test_missing_leaf_folder_exits_with_the_data_code(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "configs/fedavg_leaf_femnist.yaml", f"data.leaf_dir={tmp_path}/none",
                 f"out={tmp_path / 'run'}", *FAST])
    assert code == 3
    assert "no folder with train/ and test/" in capsys.readouterr().err
