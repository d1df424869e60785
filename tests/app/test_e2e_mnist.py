"""End to end on real MNIST (the `slow` suite: `make test-slow`, run by .ci/run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedloom.app.config import load_config
from fedloom.app.experiment import run_experiment

pytestmark = pytest.mark.slow


def test_default_config_reaches_97_percent_on_real_mnist(tmp_path: Path) -> None:
    """W1 (2NN, IID, E=1, B=10, lr 0.1): 97% first reached at round 30 with seed 0."""
    cfg = load_config("configs/default.yaml", ["rounds=40", f"out={tmp_path / 'run'}",
                                               "fleet.threads=1"])
    result = run_experiment(cfg, console=False)
    accuracies = [float(r["test_accuracy"] or 0) for r in result.history.rows]
    assert max(accuracies) >= 0.97
    assert accuracies[0] < accuracies[-1]
    assert (result.out / "metrics.png").exists()
