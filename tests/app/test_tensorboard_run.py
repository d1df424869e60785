"""``sinks: [jsonl, tensorboard]``: a run directory's event files hold metrics.jsonl's numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedloom.app.config import config_to_dict, load_config
from fedloom.app.experiment import run_experiment
from fedloom.core.errors import ConfigError
from fedloom.core.packages import ServerState
from fedloom.runtime import loop as loop_module
from fedloom.runtime.sinks import TENSORBOARD_DIR, SinkName, read_rows
from tests.tensorboard_events import expected_scalars, read_scalars

RUN = ["data.name=synthetic", "data.num_clients=10", "model.name=logreg", "cohort.size=3",
       "client.lr=0.01", "fleet.threads=1", "eval.every=2", "sinks=[jsonl,tensorboard]"]


def test_the_sinks_key() -> None:
    assert load_config(None, []).sinks == (SinkName.JSONL,)
    cfg = load_config(None, ["sinks=[jsonl,tensorboard]"])
    assert cfg.sinks == (SinkName.JSONL, SinkName.TENSORBOARD)
    assert config_to_dict(cfg)["sinks"] == ["jsonl", "tensorboard"]
    with pytest.raises(ConfigError) as err:
        load_config(None, ["sinks=[tensorboard]"])
    assert err.value.problems == ["sinks = ['tensorboard']: must name jsonl (metrics.jsonl, the "
                                  "source of truth) and each sink once, e.g. [jsonl, tensorboard]"]
    with pytest.raises(ConfigError, match=r"sinks = \['jsonl', 'jsonl'\]: must name jsonl"):
        load_config(None, ["sinks=[jsonl,jsonl]"])
    with pytest.raises(ConfigError, match=r"sinks\[1\] = 'wandb': must be one of jsonl, "
                       "tensorboard"):
        load_config(None, ["sinks=[jsonl,wandb]"])


class Interrupted(KeyboardInterrupt):
    pass


def test_a_run_and_its_resume_write_every_row_to_tensorboard(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    cfg = load_config(None, [*RUN, "rounds=5", "checkpoint.every=2", f"out={tmp_path / 'run'}"])
    original = loop_module.ServerLoop.run_round

    def run_round(self: loop_module.ServerLoop, rnd: int,
                  state: ServerState) -> tuple[ServerState, dict[str, float | int | None]]:
        if rnd == 4:  # Ctrl-C as round 4 starts; round 3 ran but is after the checkpoint
            raise Interrupted
        return original(self, rnd, state)

    with monkeypatch.context() as patch:
        patch.setattr(loop_module.ServerLoop, "run_round", run_round)
        with pytest.raises(Interrupted):
            run_experiment(cfg, console=False)
    first = read_scalars(tmp_path / "run" / TENSORBOARD_DIR)
    assert sorted(first["train_loss"]) == [1, 2, 3]
    run_experiment(cfg, console=False, resume=tmp_path / "run")
    rows = read_rows(tmp_path / "run" / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5]
    got = read_scalars(tmp_path / "run" / TENSORBOARD_DIR)
    assert got == expected_scalars(rows)  # round 3 as the resumed run wrote it
    assert set(got["test_accuracy"]) == {2, 4, 5} and len(got) > 5


def test_a_hierarchy_writes_each_aggregator_under_its_node(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    cfg = load_config(None, [
        *RUN, "rounds=2", "data.num_clients=4", "cohort.size=4", f"out={tmp_path / 'run'}",
        "topology.nodes=[{name: cloud}, {name: e0, rounds: 2}, {name: e1, rounds: 2}]",
        "topology.edges=[[e0, cloud], [e1, cloud]]"])
    run_experiment(cfg, console=False)
    rows = read_rows(tmp_path / "run" / "metrics.jsonl")
    got = read_scalars(tmp_path / "run" / TENSORBOARD_DIR)
    assert got == expected_scalars(rows)
    assert sorted(got["e0/train_loss"]) == [1, 2, 3, 4] and sorted(got["train_loss"]) == [1, 2]
