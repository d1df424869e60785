"""Evaluation off the critical path (``eval.overlap``): round r is evaluated while round r+1
trains, and the rows, the model and the checkpoints are what in-line evaluation gives."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from fedloom.app.build import build_run
from fedloom.app.config import load_config
from fedloom.core.errors import ClientError, ConfigError
from fedloom.core.packages import Downlink, Outcome
from fedloom.fleets.base import Fleet, WrappedFleet
from fedloom.runtime.checkpoint import Checkpointer, load_checkpoint
from fedloom.runtime.loop import EVAL_PENDING, ServerLoop
from fedloom.runtime.sinks import Row

TINY = ["data.name=synthetic", "data.num_clients=12", "model.name=logreg", "cohort.size=4",
        "client.lr=0.01", "client.batch_size=10", "rounds=4", "fleet.threads=1", "seed=3"]
WAIT = 20.0  # seconds an event may take before the test calls the run sequential


def _loop(*overrides: str) -> ServerLoop:
    loop = build_run(load_config(None, [*TINY, *overrides]))
    assert isinstance(loop, ServerLoop)
    return loop


def _untimed(rows: Sequence[Row]) -> list[Row]:
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]


class ListSink:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def log(self, row: Row) -> None:
        self.rows.append(dict(row))

    def close(self) -> None:
        pass


def test_rows_and_model_are_those_of_inline_evaluation() -> None:
    inline, overlapped = _loop("eval.overlap=false"), _loop("eval.overlap=true")
    assert inline.background_evaluate is None and overlapped.background_evaluate is not None
    a, b = inline.run(), overlapped.run()
    assert _untimed(a.rows) == _untimed(b.rows)
    assert [r["round"] for r in b.rows] == [1, 2, 3, 4]
    assert all(isinstance(r["test_accuracy"], float) for r in b.rows)
    assert torch.equal(a.final.params, b.final.params)


class _Gate(WrappedFleet):
    """Training of round r waits until round r-1's evaluation has started."""

    def __init__(self, inner: Fleet, evaluating: dict[int, threading.Event],
                 training: dict[int, threading.Event]) -> None:
        super().__init__(inner)
        self.evaluating, self.training = evaluating, training

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]:
        self.training[round].set()
        if round > 1 and not self.evaluating[round - 1].wait(WAIT):
            raise AssertionError(f"round {round} trained before round {round - 1} was evaluated")
        return self.inner.fit(round, tasks)


def test_a_round_is_evaluated_while_the_next_one_trains() -> None:
    loop = _loop("eval.overlap=true")
    evaluating = {r: threading.Event() for r in range(1, 5)}
    training = {r: threading.Event() for r in range(1, 5)}
    overlapped: list[int] = []
    real = loop.background_evaluate
    assert real is not None

    def evaluate(params: torch.Tensor) -> dict[str, float]:
        rnd = len(overlapped) + 1  # background evaluations come in round order
        evaluating[rnd].set()
        overlapped.append(rnd if training[rnd + 1].wait(WAIT) else -rnd)  # next one trains
        return real(params)

    loop.background_evaluate = evaluate
    loop.fleet = _Gate(loop.fleet, evaluating, training)
    rows = loop.run().rows
    assert overlapped == [1, 2, 3]  # the last round is evaluated in line
    assert [r["round"] for r in rows] == [1, 2, 3, 4]


class _FailsAt(WrappedFleet):
    def __init__(self, inner: Fleet, round: int) -> None:
        super().__init__(inner)
        self.round = round

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]:
        if round == self.round:
            raise ClientError("the fleet went away", round=round, stage="fit")
        return self.inner.fit(round, tasks)


def test_a_round_that_fails_loses_none_of_the_evaluated_rows() -> None:
    loop = _loop("eval.overlap=true")
    sink = ListSink()
    loop.sinks.append(sink)
    loop.fleet = _FailsAt(loop.fleet, 3)
    with pytest.raises(ClientError, match="went away"):
        loop.run()
    assert [r["round"] for r in sink.rows] == [1, 2]
    assert all(isinstance(r["test_accuracy"], float) for r in sink.rows)


def test_a_run_killed_while_evaluating_resumes_with_that_evaluation(tmp_path: Path) -> None:
    """Round 2's checkpoint is written as round 2 ends, its row marked as still evaluating; a
    run that dies in round 3 resumes from it, evaluates round 2's model again and ends where
    the uninterrupted run ends."""
    reference = _loop("eval.overlap=true").run()
    loop = _loop("eval.overlap=true")
    loop.checkpointer = Checkpointer(tmp_path, every=2)
    loop.fleet = _FailsAt(loop.fleet, 3)
    with pytest.raises(ClientError):
        loop.run()
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.state.round == 2 and ckpt.rows[-1].get(EVAL_PENDING) == 1
    assert "test_accuracy" not in ckpt.rows[-1]
    resumed = _loop("eval.overlap=true")
    resumed.checkpointer = Checkpointer(tmp_path, every=2)
    resumed.restore(ckpt, tmp_path)
    assert _untimed(resumed.rows) == _untimed(reference.rows[:2])
    resumed.run()
    assert _untimed(resumed.rows) == _untimed(reference.rows)
    assert torch.equal(resumed.state.params, reference.final.params)
    final = load_checkpoint(tmp_path)
    assert final.state.round == 4 and all(EVAL_PENDING not in r for r in final.rows)


def test_overlap_is_refused_where_evaluation_reads_client_state() -> None:
    with pytest.raises(ConfigError, match=r"eval\.overlap"):
        _loop("eval.overlap=true", "eval.federated=true", "algorithm.name=fedper",
              "model.name=mlp", "model.hidden=8")
    auto = _loop("eval.federated=true", "algorithm.name=fedper", "model.name=mlp",
                 "model.hidden=8")
    assert auto.background_evaluate is None


def test_simulations_evaluate_in_line_unless_asked() -> None:
    assert _loop().background_evaluate is None
