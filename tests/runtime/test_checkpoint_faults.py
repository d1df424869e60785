"""Checkpoint writes that fail for a while (no file descriptor left, a full disk) are retried and
never end the run; malformed checkpoints are named errors, never tracebacks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fedloom.core.errors import CheckpointError
from fedloom.core.packages import ServerState
from fedloom.runtime import checkpoint as ckpt_module
from fedloom.runtime.checkpoint import (
    FILENAME,
    Checkpoint,
    Checkpointer,
    load_checkpoint,
    record,
    save_checkpoint,
)


def _ckpt(round: int = 3) -> Checkpoint:
    return Checkpoint(state=ServerState(round=round, params=torch.arange(6.0)),
                      info={"sim_time": 1.5})


def _flaky(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[int]:
    """save_file fails ``failures`` times the way safetensors does when fds run out."""
    calls: list[int] = []
    real = ckpt_module.save_file

    def save_file_(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) <= failures:
            raise SafetensorError("Error while serializing: IoError(Os { code: 24, kind: "
                                  "Uncategorized, message: \"Too many open files\" })")
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ckpt_module, "save_file", save_file_)
    monkeypatch.setattr(ckpt_module.time, "sleep", lambda s: None)
    return calls


def test_a_write_that_fails_twice_is_retried_and_logged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    calls = _flaky(monkeypatch, failures=2)
    save_checkpoint(tmp_path, _ckpt(), retries=(0.1, 0.1, 0.1))
    assert len(calls) == 3 and load_checkpoint(tmp_path).state.round == 3
    retried = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert len(retried) == 2 and "Too many open files" in retried[0]


def test_a_write_that_keeps_failing_is_a_checkpoint_error_not_a_safetensor_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path, _ckpt(2))
    _flaky(monkeypatch, failures=99)
    with pytest.raises(CheckpointError, match="Too many open files"):
        save_checkpoint(tmp_path, _ckpt(3), retries=(0.1,))
    assert load_checkpoint(tmp_path).state.round == 2  # the last good one stays


def test_the_round_loop_keeps_going_when_a_checkpoint_cannot_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    _flaky(monkeypatch, failures=99)
    rows: list[dict[str, object]] = []
    caplog.set_level(logging.ERROR)
    record({"round": 4}, last=10, rows=rows, sinks=[], checkpointer=Checkpointer(tmp_path),
           snapshot=lambda: _ckpt(4))
    assert rows == [{"round": 4}]
    assert any("round 4: cannot write the checkpoint" in r.getMessage()
               and r.levelno == logging.ERROR for r in caplog.records)


def _damage(path: Path, *, tensors: dict[str, torch.Tensor] | None = None,
            **meta: str | None) -> None:
    stored = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    for key, value in meta.items():
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    save_file({**stored, **(tensors or {})}, str(path), metadata=metadata)


@pytest.mark.parametrize(("damage", "message"), [
    ({"round": None}, "key 'round' = None"),
    ({"round": "²"}, "key 'round' = '²'"),
    ({"round": "9" * 40}, "expected a round number"),
    ({"rows": "[" * 100_000}, "key 'rows' is not valid JSON"),
    ({"info": "{"}, "key 'info' is not valid JSON"),
    ({"info": '{"sim_time": "x"}'}, "sim_time = 'x'"),
    ({"info": '{"starts": [1]}'}, "starts = [1]"),
    ({"info": '{"sim_time": NaN}'}, "sim_time = nan"),
    ({"tensors": {"store/c/²": torch.ones(1)}}, "tensor 'store/c/²'"),
    ({"tensors": {"store/c/-1": torch.ones(1)}}, "tensor 'store/c/-1'"),
])
def test_a_malformed_checkpoint_is_a_named_checkpoint_error(
        tmp_path: Path, damage: dict[str, object], message: str) -> None:
    save_checkpoint(tmp_path, _ckpt())
    _damage(tmp_path / FILENAME, **damage)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path)
    assert str(tmp_path / FILENAME) in str(info.value) and message in str(info.value)
