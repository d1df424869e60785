"""`fedloom demo deploy`: a server and client processes on loopback, FedAvg on real MNIST."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedloom.app.demo import run_demo
from fedloom.core.errors import DataError
from fedloom.data import DataConfig, load_federated
from fedloom.runtime.sinks import read_rows


@pytest.mark.slow
def test_the_demo_trains_mnist_over_tls_with_tokens(tmp_path: Path) -> None:
    try:
        load_federated(DataConfig(name="mnist", num_clients=2), seed=0)
    except DataError as err:  # not on this machine and cannot be fetched
        pytest.skip(f"MNIST not available: {err}")
    run = run_demo(clients=2, tls=True, overrides=["rounds=2"], root=tmp_path)
    rows = read_rows(run / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[-1]["test_accuracy"] > 0.9
