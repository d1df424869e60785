"""FedAvg with the character LSTM on a tiny generated play, through the whole run assembly:
the serial, thread and process fleets give bitwise the same model; the vectorized fleet (nn.LSTM
under vmap, through torch's per-client fallback) agrees within float tolerance; federated
evaluation reads the roles' natural local test splits. The process fleet (spawning workers) and
the vectorized fleet take 5-15 s on a loaded 2-core box: those comparisons are marked slow.

Tolerance: the vectorized fleet sums in another order (batched embedding gradients, a weighted
per-example loss), so after 2 rounds of 4 local steps every parameter is within ``TOL = 1e-5``
of the serial fleet's (observed <= 1e-7); a masking mistake moves them by 1e-3 or more."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from fedloom.app.build import build_run
from fedloom.app.config import parse_run_config
from fedloom.runtime.loop import History
from tests.data.shakespeare_text import play, use_text

TOL = 1e-5


def run_config(root: Path, fleet: dict[str, Any]) -> dict[str, Any]:
    return {"rounds": 2, "seed": 1,
            "data": {"name": "shakespeare", "dir": str(root), "seq_len": 8, "min_chars": 0,
                     "num_clients": 6},
            "model": {"name": "lstm", "lstm_hidden": 8, "embedding": 4},
            "algorithm": {"name": "fedavg"}, "cohort": {"size": 3},
            "client": {"epochs": 1, "steps": 4, "batch_size": 4, "lr": 0.5},
            "eval": {"every": 1, "federated": True}, "fleet": fleet}


FLEETS = {"serial": {"kind": "serial", "threads": 1},
          "thread": {"kind": "thread", "workers": 2, "threads": 1},
          "process": {"kind": "process", "workers": 2, "threads": 1},
          "vectorized": {"kind": "vectorized", "threads": 1}}


@pytest.fixture(scope="module")
def histories(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, History]]:
    """Each fleet's run, made when a test first asks for it."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        root = use_text(tmp_path_factory.mktemp("play"), monkeypatch, play(roles=6,
                                                                            speeches=30))
        yield Runs(root)


class Runs(dict[str, History]):
    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, fleet: str) -> History:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        run = build_run(parse_run_config(run_config(self.root, FLEETS[fleet])))
        try:
            self[fleet] = run.run()
        finally:
            run.fleet.close()
            torch.set_num_threads(before)
        return self[fleet]


def test_two_rounds_train_and_evaluate(histories: dict[str, History]) -> None:
    rows = histories["serial"].rows
    assert len(rows) == 2
    for key in ("test_accuracy", "test_loss", "fed_accuracy_mean"):
        assert all(isinstance(r.get(key), float) for r in rows)
    assert float(rows[-1]["test_loss"]) < 4.0  # type: ignore[arg-type]  # ln(vocab) ~ 3.3


@pytest.mark.parametrize("fleet", ["thread", pytest.param("process", marks=pytest.mark.slow)])
def test_fleets_are_bitwise_equal_to_serial(histories: dict[str, History], fleet: str) -> None:
    assert torch.equal(histories[fleet].final.params, histories["serial"].final.params)


@pytest.mark.slow  # torch's per-client fallback for the LSTM: seconds, not milliseconds
def test_vectorized_agrees_within_tolerance(histories: dict[str, History]) -> None:
    serial, vectorized = histories["serial"].final.params, histories["vectorized"].final.params
    assert float((vectorized - serial).abs().max()) <= TOL
