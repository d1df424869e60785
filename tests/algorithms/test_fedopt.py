"""Hand-computed server updates of FedAvgM and FedAdam / FedYogi / FedAdagrad."""

from __future__ import annotations

import math

import pytest
import torch

from fedloom.algorithms.fedopt import (
    FedAvgMOptions,
    FedOptOptions,
    fedadagrad,
    fedadam,
    fedavgm,
    fedyogi,
)
from fedloom.core.errors import ConfigError
from fedloom.core.packages import ClientResult


def _results(*values: float) -> list[ClientResult]:
    return [ClientResult(round=1, client_id=i, params=torch.tensor([v], dtype=torch.float64),
                         num_examples=1, num_steps=1) for i, v in enumerate(values)]


def test_fedavgm_momentum_by_hand() -> None:
    algo = fedavgm(FedAvgMOptions(server_lr=1.0, momentum=0.5))
    s = algo.init(torch.tensor([0.0], dtype=torch.float64))
    s = algo.aggregate(1, s, _results(1.0, 3.0))      # delta 2, v = 2, x = 2
    assert s.params.item() == 2.0
    s = algo.aggregate(2, s, _results(3.0, 3.0))      # delta 1, v = 0.5*2 + 1 = 2, x = 4
    assert s.params.item() == 4.0


def test_fedavgm_without_momentum_is_fedavg() -> None:
    algo = fedavgm(FedAvgMOptions(server_lr=1.0, momentum=0.0))
    s = algo.aggregate(1, algo.init(torch.tensor([5.0], dtype=torch.float64)), _results(1.0, 2.0))
    assert s.params.item() == 1.5


@pytest.mark.parametrize(("make", "v1"), [
    # delta = 2 after round 1 from x0 = 0, tau = 0.1 -> v0 = 0.01, beta2 = 0.5
    (fedadagrad, 0.01 + 4.0),
    (fedadam, 0.5 * 0.01 + 0.5 * 4.0),
    (fedyogi, 0.01 - 0.5 * 4.0 * -1.0),   # sign(v0 - delta^2) = -1
])
def test_adaptive_step_by_hand(make, v1: float) -> None:  # type: ignore[no-untyped-def]
    opts = FedOptOptions(server_lr=0.1, beta1=0.5, beta2=0.5, tau=0.1)
    algo = make(opts)
    s = algo.aggregate(1, algo.init(torch.tensor([0.0], dtype=torch.float64)), _results(2.0))
    m1 = 0.5 * 2.0
    assert s.extras["v"].item() == pytest.approx(v1, rel=1e-12)
    assert s.params.item() == pytest.approx(0.1 * m1 / (math.sqrt(v1) + 0.1), rel=1e-12)


def test_yogi_second_step_by_hand() -> None:
    opts = FedOptOptions(server_lr=0.1, beta1=0.5, beta2=0.5, tau=0.1)
    algo = fedyogi(opts)
    s = algo.init(torch.tensor([0.0], dtype=torch.float64))
    s = algo.aggregate(1, s, _results(2.0))
    x1, m1, v1 = s.params.item(), s.extras["m"].item(), s.extras["v"].item()
    s = algo.aggregate(2, s, _results(x1))   # delta 0: m halves, v unchanged (delta^2 = 0)
    assert s.extras["v"].item() == pytest.approx(v1)
    assert s.params.item() == pytest.approx(x1 + 0.1 * 0.5 * m1 / (math.sqrt(v1) + 0.1))


@pytest.mark.parametrize(("options", "key"), [
    (dict(beta1=1.0), "beta1"), (dict(beta2=-0.1), "beta2"), (dict(tau=0.0), "tau"),
    (dict(server_lr=0.0), "server_lr"),
])
def test_out_of_range_options_name_key_and_range(options: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        FedOptOptions(**options)
    with pytest.raises(ConfigError, match=r"momentum = 1.0: must be in \[0, 1\)"):
        FedAvgMOptions(momentum=1.0)
