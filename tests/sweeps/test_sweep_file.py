"""Sweep files: expansion into tasks, and bad input rejected before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedloom.cli import main
from fedloom.core.errors import ConfigError
from fedloom.sweeps.sweep import load_sweep

REPO = Path(__file__).parents[2]
DEFAULT = REPO / "configs" / "default.yaml"
TINY = ["data.name=synthetic", "data.num_clients=12", "model.name=logreg", "cohort.size=4",
        "rounds=2", "client.lr=0.01"]


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_shipped_example_expands_to_six_mnist_runs() -> None:
    sweep = load_sweep(REPO / "configs" / "sweep_example.yaml")
    assert sweep.name == "sweep_example" and sweep.target_accuracy == 0.9
    assert sweep.cpu_slots == 2 and sweep.grid_keys == ("client.lr",)
    assert [p.task_id for p in sweep.points] == [
        f"client.lr-{lr}_seed-{s}" for lr in (0.05, 0.1) for s in (0, 1, 2)]
    assert sweep.points[0].overrides == ("rounds=3", "client.lr=0.05", "seed=0")
    assert len({p.config_id for p in sweep.points}) == 2
    assert len({p.fingerprint for p in sweep.points}) == 6


def test_grid_runs_and_seeds_cross_and_base_is_found_next_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(DEFAULT.read_text())
    path = write(tmp_path, f"""
base: base.yaml
overrides: {TINY}
grid: {{client.lr: [0.01, 0.1], algorithm.name: [fedavg, fedprox]}}
runs:
  - {{id: plain}}
  - {{id: momentum, overrides: [client.momentum=0.9]}}
seeds: [3]
""")
    sweep = load_sweep(path, ["rounds=1"])
    assert sweep.name == "sweep" and sweep.base == tmp_path / "base.yaml"
    assert len(sweep.points) == 8
    first = sweep.points[0]
    assert first.task_id == "plain_client.lr-0.01_algorithm.name-fedavg_seed-3"
    assert first.params == {"run": "plain", "client.lr": 0.01, "algorithm.name": "fedavg"}
    assert first.overrides[-4:] == ("rounds=1", "client.lr=0.01", "algorithm.name=fedavg",
                                    "seed=3")
    assert "client.momentum=0.9" in sweep.points[4].overrides


def test_no_grid_no_seeds_is_one_task_from_the_base(tmp_path: Path) -> None:
    sweep = load_sweep(write(tmp_path, f"base: {DEFAULT}\noverrides: {TINY}\n"))
    assert [(p.task_id, p.seed) for p in sweep.points] == [("base", None)]


def rejected(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_sweep(write(tmp_path, text))
    return str(info.value)


def test_unknown_and_malformed_keys_are_all_reported_at_once(tmp_path: Path) -> None:
    text = rejected(tmp_path, f"""
name: ok
base: {DEFAULT}
gird: {{client.lr: [0.1]}}
grid: {{client.lr: [], "not a key": [1], client.momentum: 0.9}}
seeds: [0, 0]
target_accuracy: 1.5
slots: {{cpu: 0, gpus: 2}}
overrides: [rounds]
runs: [{{id: a, overides: [rounds=1]}}]
""")
    for needle in ("gird = {'client.lr': [0.1]}: unknown key; allowed keys: name, base",
                   "grid.client.lr = []: must be a non-empty list",
                   "grid.not a key = [1]: the key must be a dotted run-config key",
                   "grid.client.momentum = 0.9: must be a non-empty list",
                   "seeds = [0, 0]: must be a non-empty list of distinct integers",
                   "target_accuracy = 1.5: must be a number in (0, 1]",
                   "slots.cpu = 0: must be an integer >= 1", "slots.gpus = 2: unknown key",
                   "overrides[0] = 'rounds': must be a key=value string",
                   "runs[0].overides = ['rounds=1']: unknown key; allowed keys here: id, "
                   "overrides"):
        assert needle in text, (needle, text)
    assert "10 problems" in text


def test_overrides_that_do_not_exist_in_the_run_config_name_their_sweep_key(
        tmp_path: Path) -> None:
    text = rejected(tmp_path, f"""
base: {DEFAULT}
overrides: [{", ".join(TINY)}, client.bogus=1]
grid: {{client.lr: [0.1, 0.2], model.depth: [2]}}
runs: [{{id: a, overrides: [algorithm.mu=0.1]}}]
seeds: [0, 1]
""")
    assert "grid.model.depth = 2: unknown key; allowed keys here: name, hidden" in text
    assert "overrides: client.bogus = 1: unknown key" in text
    assert "runs[0].overrides: algorithm.mu = 0.1: unknown key" in text
    assert "(in 4 tasks)" in text  # one line per problem, not one per task


def test_duplicate_and_unsafe_task_ids_are_rejected(tmp_path: Path) -> None:
    text = rejected(tmp_path, f"""
name: ../escape
base: {DEFAULT}
overrides: {TINY}
runs: [{{id: a}}, {{id: a}}, {{id: ../../etc}}, {{id: "x y"}}]
grid: {{data.dir: [d/1, d_1]}}
""")
    assert "name = '../escape': is not a safe directory name" in text
    assert "runs[1].id = 'a': duplicate task id (also runs[0].id)" in text
    assert "runs[2].id = '../../etc': is not a safe directory name" in text
    assert "runs[3].id = 'x y': is not a safe directory name" in text
    text = rejected(tmp_path, f"""
base: {DEFAULT}
overrides: {TINY}
grid: {{data.dir: [d/1, d_1]}}
""")
    assert "task_id = 'data.dir-d_1': duplicate task id: made by data.dir='d/1' and by " \
           "data.dir='d_1'" in text


def test_missing_base_and_bad_yaml(tmp_path: Path) -> None:
    assert "base = 'nope.yaml': file not found (looked at" in rejected(tmp_path, "base: nope.yaml")
    assert "duplicate key" in rejected(tmp_path, "seeds: [0]\nseeds: [1]\n")
    assert "not valid YAML" in rejected(tmp_path, "grid: [unclosed\n")
    assert "mapping at the top level" in rejected(tmp_path, "- a\n")


def test_the_cli_rejects_a_bad_sweep_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, f"base: {DEFAULT}\noverrides: {TINY}\ngrid: {{client.nope: [1]}}\n")
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 2
    assert "grid.client.nope = 1: unknown key" in capsys.readouterr().err
    assert not out.exists()
    assert main(["report", str(tmp_path)]) == 2
    assert "not a sweep directory" in capsys.readouterr().err
