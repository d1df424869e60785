"""Resumable simulations: ``fedloom run ... checkpoint.every=N`` then ``fedloom run --resume``.

A run killed with SIGKILL (or interrupted) and resumed ends with the uninterrupted run's model,
bit for bit on every fleet but ``vectorized`` (float tolerance); a malformed checkpoint is
refused with an error naming the file and the key.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fedloom.app.config import config_to_yaml, load_config
from fedloom.app.experiment import run_experiment
from fedloom.cli import main
from fedloom.core.errors import CheckpointError, ConfigError
from fedloom.core.packages import ServerState
from fedloom.runtime import loop as loop_module
from fedloom.runtime.checkpoint import (
    FILENAME,
    Checkpoint,
    check_resumable,
    load_checkpoint,
    save_checkpoint,
)
from fedloom.runtime.sinks import read_rows
from tests.loopback import fedloom_cmd, processes, spawn, wait_until

RUN = ["data.name=synthetic", "data.num_clients=20", "model.name=logreg", "cohort.size=5",
       "client.lr=0.01", "client.epochs=3", "fleet.threads=1", "eval.every=5"]


def _model(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _same_rows(a: Path, b: Path) -> None:
    """The same rounds with the same numbers (all but wall-clock timings)."""
    timed = {"fit_seconds", "aggregate_seconds", "eval_seconds", "round_seconds"}
    got, want = read_rows(a / "metrics.jsonl"), read_rows(b / "metrics.jsonl")
    assert [{k: v for k, v in r.items() if k not in timed} for r in got] == \
        [{k: v for k, v in r.items() if k not in timed} for r in want]


@pytest.mark.integration
@pytest.mark.parametrize("algorithm", ["fedavg", "scaffold"])
def test_a_simulation_killed_with_sigkill_resumes_to_the_uninterrupted_model(
        tmp_path: Path, algorithm: str) -> None:
    overrides = [*RUN, "rounds=30", f"algorithm.name={algorithm}", "fleet.kind=process",
                 "fleet.workers=2", f"fleet.share_dir={tmp_path}", "checkpoint.every=1"]
    config = tmp_path / "run.yaml"
    config.write_text(config_to_yaml(load_config(None, overrides)))
    run = tmp_path / "run"
    with processes() as started:
        first = spawn(started, fedloom_cmd("run", str(config), "--quiet", f"out={run}"))

        def three_rounds_done() -> bool:
            try:
                return load_checkpoint(run).state.round >= 3
            except (CheckpointError, OSError):
                return False

        assert wait_until(three_rounds_done, timeout=120), first.communicate(timeout=5)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        killed_at = load_checkpoint(run).state.round
        assert killed_at < 30, "the run ended before it could be killed"
        resumed = spawn(started, fedloom_cmd("run", "--resume", str(run), "--quiet"))
        out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "final test accuracy" in out
    reference = tmp_path / "reference"
    run_experiment(load_config(config, [f"out={reference}"]), console=False)
    got, want = _model(run), _model(reference)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert [r["round"] for r in read_rows(run / "metrics.jsonl")] == list(range(1, 31))
    _same_rows(run, reference)


class Interrupted(KeyboardInterrupt):
    pass


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    """Ctrl-C as round ``at`` starts (rounds before it are done and checkpointed)."""
    original = loop_module.ServerLoop.run_round

    def run_round(self: loop_module.ServerLoop, rnd: int,
                  state: ServerState) -> tuple[ServerState, dict[str, float | int | None]]:
        if rnd == at:
            raise Interrupted
        return original(self, rnd, state)

    monkeypatch.setattr(loop_module.ServerLoop, "run_round", run_round)


@pytest.mark.parametrize(("fleet", "exact"), [("serial", True), ("thread", True),
                                               ("vectorized", False)])
@pytest.mark.parametrize("algorithm", ["fedavg", "scaffold", "ditto"])
def test_an_interrupted_run_resumes_on_every_fleet(tmp_path: Path, fleet: str, exact: bool,
                                                   algorithm: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = [*RUN, "rounds=5", "checkpoint.every=2", f"fleet.kind={fleet}",
                 f"algorithm.name={algorithm}"]
    reference = run_experiment(load_config(None, [*overrides, f"out={tmp_path / 'ref'}"]),
                               console=False)
    cfg = load_config(None, [*overrides, f"out={tmp_path / 'run'}"])
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 4)
        with pytest.raises(Interrupted):
            run_experiment(cfg, console=False)
    assert load_checkpoint(tmp_path / "run").state.round == 2  # every 2: round 3 is redone
    result = run_experiment(cfg, console=False, resume=tmp_path / "run")
    assert [r["round"] for r in result.history.rows] == [3, 4, 5]
    got, want = result.history.final, reference.history.final
    if exact:
        assert torch.equal(got.params, want.params)
        assert all(torch.equal(got.extras[k], v) for k, v in want.extras.items())
    else:
        torch.testing.assert_close(got.params, want.params, atol=1e-5, rtol=0)
    assert [r["round"] for r in read_rows(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_an_async_simulation_resumes_to_its_last_version(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Asynchronous runs resume from their last checkpointed version (tasks in flight are
    handed out again, so not bitwise)."""
    from fedloom.runtime import async_loop

    overrides = [*RUN, "rounds=6", "checkpoint.every=1", "algorithm.name=fedbuff",
                 "algorithm.buffer_size=2", "clock.concurrency=4", f"out={tmp_path / 'run'}"]
    cfg = load_config(None, overrides)
    original = async_loop.AsyncLoop._row
    calls: list[int] = []

    def interrupt_late(self: async_loop.AsyncLoop, window: object) -> dict[str, object]:
        calls.append(1)
        if len(calls) == 4:
            raise Interrupted
        return original(self, window)  # type: ignore[arg-type, return-value]

    with monkeypatch.context() as patch:
        patch.setattr(async_loop.AsyncLoop, "_row", interrupt_late)
        with pytest.raises(Interrupted):
            run_experiment(cfg, console=False)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.state.round == 3 and ckpt.info["starts"] > 0
    result = run_experiment(cfg, console=False, resume=tmp_path / "run")
    assert [r["round"] for r in result.history.rows] == [4, 5, 6]
    assert bool(torch.isfinite(result.history.final.params).all())
    assert [r["round"] for r in read_rows(tmp_path / "run" / "metrics.jsonl")] == list(
        range(1, 7))


def test_resuming_with_another_config_or_without_a_checkpoint_is_refused(
        tmp_path: Path) -> None:
    overrides = [*RUN, "rounds=2", f"out={tmp_path / 'run'}"]
    run_experiment(load_config(None, overrides), console=False)  # checkpoint.every = 0
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        run_experiment(load_config(None, overrides), console=False, resume=tmp_path / "run")
    with pytest.raises(ConfigError, match="differs from the run's"):
        run_experiment(load_config(None, [*overrides, "client.lr=0.5"]), console=False,
                       resume=tmp_path / "run")


# ---- malformed checkpoints ------------------------------------------------------------------

def _good(directory: Path) -> Path:
    state = ServerState(round=3, params=torch.arange(6.0), extras={"m": torch.zeros(6)})
    save_checkpoint(directory, Checkpoint(state=state, store={("c", 2): torch.ones(4)},
                                          rows=({"round": 3},), info={"sim_time": 1.5}))
    return directory / FILENAME


def _rewrite(path: Path, *, drop: str | None = None, add: dict[str, torch.Tensor] | None = None,
             **meta: str) -> None:
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    if drop is not None:
        tensors.pop(drop)
    tensors.update(add or {})
    metadata.update(meta)
    save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize(("damage", "message"), [
    ({"format": "something-else"}, "key 'format'"),
    ({"round": "three"}, "key 'round'"),
    ({"rows": "[{"}, "key 'rows' is not valid JSON"),
    ({"rows": '{"round": 3}'}, "key 'rows' must be a JSON list"),
    ({"rows": "[1, 2]"}, "key 'rows' must be a JSON list of objects"),
    ({"info": "[]"}, "key 'info' must be a JSON dict"),
    ({"drop": "params"}, "tensor 'params'"),
    ({"add": {"store/c/x": torch.ones(1)}}, "tensor 'store/c/x'"),
])
def test_a_malformed_checkpoint_is_refused_by_file_and_key(
        tmp_path: Path, damage: dict[str, object], message: str) -> None:
    path = _good(tmp_path)
    meta = {k: v for k, v in damage.items() if k not in ("drop", "add")}
    _rewrite(path, drop=damage.get("drop"), add=damage.get("add"),  # type: ignore[arg-type]
             **meta)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_a_checkpoint_that_is_not_safetensors_is_refused(tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_bytes(b"\x07not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_of_another_model_or_algorithm_is_refused(tmp_path: Path) -> None:
    ckpt = load_checkpoint(_good(tmp_path).parent)
    with pytest.raises(CheckpointError, match="tensor 'params' has 6 values"):
        check_resumable(ckpt, ServerState(round=0, params=torch.zeros(7),
                                          extras={"m": torch.zeros(7)}), tmp_path)
    with pytest.raises(CheckpointError, match=r"algorithm's tensors are \['m'\]"):
        check_resumable(ckpt, ServerState(round=0, params=torch.zeros(6)), tmp_path)
    with pytest.raises(CheckpointError, match="tensor 'extras/m' has shape"):
        check_resumable(ckpt, ServerState(round=0, params=torch.zeros(6),
                                          extras={"m": torch.zeros(2)}), tmp_path)


def test_the_command_line_names_a_broken_checkpoint_without_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overrides = [*RUN, "rounds=2", "checkpoint.every=1", f"out={tmp_path / 'run'}"]
    run_experiment(load_config(None, overrides), console=False)
    (tmp_path / "run" / FILENAME).write_bytes(b"garbage")
    code = main(["run", "--resume", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 4
    assert str(tmp_path / "run" / FILENAME) in err and "Traceback" not in err
