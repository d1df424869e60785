"""The command line end to end on small synthetic data, and its error handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedloom.app.config import load_config
from fedloom.cli import main
from fedloom.models import logreg

SMALL = ["data.name=synthetic", "data.num_clients=12", "model.name=logreg", "cohort.size=4",
         "client.lr=0.01", "client.batch_size=10", "rounds=4", "eval.every=2"]


def test_run_writes_a_complete_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", "configs/fedavg_synthetic_1_1.yaml", *SMALL, f"out={out}",
                 "--quiet"]) == 0
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "metrics.jsonl",
                                                "model.safetensors", "metrics.png"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    for key in ("test_accuracy", "test_loss", "train_loss", "fit_seconds", "round_seconds"):
        assert key in rows[0]
    assert rows[0]["test_accuracy"] is None and rows[1]["test_accuracy"] is not None
    assert 0.0 <= rows[3]["test_accuracy"] <= 1.0
    cfg = load_config(out / "config.yaml")
    assert cfg.rounds == 4 and cfg.data.num_clients == 12
    tensors = load_file(str(out / "model.safetensors"))
    model = logreg((60,), 10)
    model.load_state_dict(tensors)
    assert torch.isfinite(model[1].weight).all()


def test_existing_run_directory_is_not_overwritten(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"round": 1}\n')
    assert main(["run", "configs/fedavg_synthetic_1_1.yaml", *SMALL, f"out={out}"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == '{"round": 1}\n'


def test_partition_prints_counts_and_plots(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "labels.png"
    assert main(["partition", "configs/fedavg_synthetic_1_1.yaml", *SMALL,
                 "--plot", str(plot)]) == 0
    assert plot.stat().st_size > 1000
    assert "client" in capsys.readouterr().out.lower()


@pytest.mark.parametrize(("config", "needles"), [
    ("configs/hierarchy_mnist_noniid.yaml", ["cloud [root", "edge9 [aggregator, 2 round(s)",
                                             "10 clients (90-99)"]),
    ("configs/gossip_ring.yaml", ["gossip: 16 nodes, 16 links, degree 2..2", "0 <-> 1, 15"]),
])
def test_topology_prints_the_groups_and_draws_them(config: str, needles: list[str],
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "topology.png"
    assert main(["topology", config, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in needles), out
    assert plot.stat().st_size > 5000
    assert main(["topology", "configs/default.yaml"]) == 2
    assert "has no topology section" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["run", "configs/default.yaml", "cohort.size=500", "client.lr=-1"], 2, "2 problems"),
    (["run", "missing.yaml"], 2, "does not exist"),
    (["run", "configs/default.yaml", "model.name=cnn", "data.name=synthetic"], 2,
      "needs image inputs"),
])
def test_bad_input_exits_cleanly_without_traceback(args: list[str], code: int,
                                                   needle: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "fedloom", *args, "rounds=1", "--quiet",
                           "out=/tmp/fedloom-test-never"], capture_output=True, text=True,
                          timeout=120, env={"FEDLOOM_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                            "PYTHONPATH": "src"})
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, proc.stderr
    assert needle in proc.stderr


def test_missing_dataset_says_where_it_looked(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FEDLOOM_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    import fedloom.data.locate as locate

    monkeypatch.setattr(locate, "search_roots",
                        lambda data_dir=None: [Path(data_dir)] if data_dir else [])
    code = main(["run", str(Path(__file__).parents[2] / "configs/default.yaml"),
                 f"data.dir={tmp_path}/nowhere", "rounds=1"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "nowhere" in err
