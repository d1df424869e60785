"""Checkpoints: exact round trips, atomic replacement, and a resumed deployment that ends with
the model of an uninterrupted (simulated) run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from fedloom.algorithms.client_store import DiskStore, MemoryStore
from fedloom.app.build import build_run
from fedloom.app.client import ConfigClient
from fedloom.app.config import load_config
from fedloom.app.server import ServerOptions, build_deployment
from fedloom.core.errors import CheckpointError
from fedloom.core.packages import ServerState
from fedloom.runtime import checkpoint as ckpt_module
from fedloom.runtime.checkpoint import (
    FILENAME,
    Checkpoint,
    load_checkpoint,
    restore_store,
    save_checkpoint,
    store_contents,
)
from fedloom.runtime.sinks import Row, read_rows
from tests.loopback import SYNTH, serve_to_the_end, thread_clients


def _state() -> ServerState:
    return ServerState(round=7, params=torch.randn(10),
                       extras={"m": torch.randn(10), "v": torch.rand(10),
                               "buffer": torch.ones(10)})  # FedBuff's pending deltas


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_a_checkpoint_round_trips_state_store_buffer_and_rows(tmp_path: Path, kind: str) -> None:
    store = MemoryStore() if kind == "memory" else DiskStore(tmp_path / "state", 5)
    store.put(1, "c", torch.arange(4.0))
    store.put(4, "c", torch.ones(4))
    store.put(2, "personal", torch.full((10,), 3.0))
    state = _state()
    rows: list[Row] = [{"round": 6, "test_accuracy": 0.5}, {"round": 7, "test_accuracy": None}]
    save_checkpoint(tmp_path, Checkpoint(state=state, store=store_contents(store),
                                         rows=tuple(rows),
                                         info={"starts": 12}))
    back = load_checkpoint(tmp_path)
    assert back.state.round == 7 and torch.equal(back.state.params, state.params)
    assert set(back.state.extras) == {"m", "v", "buffer"}
    assert all(torch.equal(back.state.extras[k], v) for k, v in state.extras.items())
    assert sorted(back.store) == [("c", 1), ("c", 4), ("personal", 2)]
    assert torch.equal(back.store[("c", 1)], torch.arange(4.0))
    assert list(back.rows) == rows and back.info == {"starts": 12}
    assert torch.equal(back.state.extras["buffer"], torch.ones(10))
    store.put(3, "c", torch.zeros(4))  # written after the checkpoint: must go on restore
    restore_store(store, back.store)
    assert store.get(3, "c") is None and torch.equal(store.get(1, "c"), torch.arange(4.0))
    assert not list(tmp_path.glob(".*tmp"))


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path, Checkpoint(state=_state()))
    before = (tmp_path / FILENAME).read_bytes()

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_module, "save_file", full_disk)
    with pytest.raises(CheckpointError, match="No space left"):
        save_checkpoint(tmp_path, Checkpoint(state=dataclasses.replace(_state(), round=8)),
                        retries=())
    assert (tmp_path / FILENAME).read_bytes() == before


def test_no_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nothing to resume"):
        load_checkpoint(tmp_path)


class Crash(Exception):
    pass


class CrashAfter:
    """A sink that stops the server loop after the given round (its checkpoint is written)."""

    def __init__(self, round: int) -> None:
        self.round = round

    def log(self, row: Row) -> None:
        if row["round"] == self.round:
            raise Crash

    def close(self) -> None:
        pass


@pytest.mark.parametrize("algorithm", ["fedadam", "scaffold"])
def test_a_resumed_server_ends_with_the_uninterrupted_model(tmp_path: Path,
                                                            algorithm: str) -> None:
    overrides = [*SYNTH, "rounds=4", f"algorithm.name={algorithm}"]
    expected = build_run(load_config(None, overrides)).run().final
    cfg = load_config(None, [*overrides, f"out={tmp_path / 'run'}"])
    options = ServerOptions(address="127.0.0.1:0", insecure=True, console=False)
    dep = build_deployment(cfg, options)
    dep.loop.sinks.insert(0, CrashAfter(2))  # after the checkpoint, before metrics.jsonl
    try:
        with thread_clients(dep.server.port, range(6), client=ConfigClient()):
            dep.fleet.wait_for_clients(6, 30)
            with pytest.raises(Crash):
                dep.loop.run()
    finally:
        dep.server.stop(grace=0.5)
    assert len(read_rows(tmp_path / "run" / "metrics.jsonl")) == 1  # round 2's row was lost
    dep = build_deployment(cfg, dataclasses.replace(options, resume=str(tmp_path / "run")))
    assert dep.loop.state.round == 2
    history = serve_to_the_end(dep)
    assert torch.equal(history.final.params, expected.params)
    assert all(torch.equal(history.final.extras[k], v) for k, v in expected.extras.items())
    rows = read_rows(tmp_path / "run" / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3, 4]  # round 2's row comes from the checkpoint
    meta = json.loads(json.dumps(rows[1]))
    assert meta["num_results"] == 3
