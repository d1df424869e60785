"""The shipped Tiny Shakespeare config through the CLI: two rounds on a tiny generated play (the
loss goes down), and a few rounds on the real file (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedloom.cli import main
from tests.data.shakespeare_text import play, use_text

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "fedavg_shakespeare_lstm.yaml"
REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def rows(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_config_runs_two_rounds_on_a_tiny_play(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDLOOM_OFFLINE", "1")
    root = use_text(tmp_path / "data", monkeypatch, play(roles=5, speeches=40))
    out = tmp_path / "run"
    code = main(["run", str(CONFIG), f"data.dir={root}", "data.min_chars=0", "data.seq_len=10",
                 "model.lstm_hidden=16", "rounds=2", "cohort.size=3", "client.steps=5",
                 "eval.every=1", "fleet.kind=serial", "fleet.threads=1", f"out={out}",
                 "--quiet"])
    assert code == 0
    got = rows(out)
    assert len(got) == 2 and got[-1]["test_loss"] < 4.0  # ln(26 characters) = 3.26 at random


@pytest.mark.slow
def test_real_text_loss_decreases(tmp_path: Path) -> None:
    if not (REAL / "tiny-shakespeare" / "input.txt").is_file():
        pytest.skip("no ../shared/data/tiny-shakespeare/input.txt")
    out = tmp_path / "run"
    # 64 units, a test set of each role's last 1% of windows (about 9,000): a minute or two
    code = main(["run", str(CONFIG), f"data.dir={REAL}", "data.test_fraction=0.01",
                 "model.lstm_hidden=64", "rounds=4", "client.steps=20", "eval.every=1",
                 "fleet.kind=serial", "fleet.threads=1", f"out={out}", "--quiet"])
    assert code == 0
    losses = [r["test_loss"] for r in rows(out)]
    assert losses[-1] < losses[0] < 4.2  # ln(65) = 4.17 at random
