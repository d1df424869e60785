"""Each algorithm on quadratic clients converges to its closed-form fixed point (BENCHMARKS.md).

Client objectives ``1/2 ||x - e_i||^2``, ``tau_i`` full-batch gradient steps of size ``eta``,
``p_i`` proportional to example counts, ``a_i = 1 - (1 - eta)^tau_i``.
"""

from __future__ import annotations

import pytest
import torch

from fedloom import FedAvg
from fedloom.algorithms.feddyn import FedDyn, FedDynOptions
from fedloom.algorithms.fednova import FedNova
from fedloom.algorithms.fedprox import FedProx, FedProxOptions
from fedloom.algorithms.scaffold import Scaffold, ScaffoldOptions
from tests.algorithms.quadratic import run_quadratic

COUNTS, TAUS, ETA = [3, 1, 2, 5], [1, 2, 5, 10], 0.1
P = torch.tensor(COUNTS, dtype=torch.float64)
A = torch.tensor([1 - (1 - ETA) ** t for t in TAUS], dtype=torch.float64)
OPTIMUM = P / P.sum()  # the minimiser of sum_i p_i f_i


def test_fedavg_fixed_point() -> None:
    final = run_quadratic(FedAvg(), COUNTS, TAUS, ETA, rounds=300)
    assert torch.allclose(final, P * A / (P * A).sum(), atol=1e-6, rtol=0)
    assert not torch.allclose(final, OPTIMUM, atol=1e-3)  # FedAvg's bias with unequal steps


def test_fednova_fixed_point() -> None:
    final = run_quadratic(FedNova(), COUNTS, TAUS, ETA, rounds=300)
    weights = P * A / torch.tensor(TAUS, dtype=torch.float64)
    assert torch.allclose(final, weights / weights.sum(), atol=1e-6, rtol=0)


def test_fedprox_fixed_point() -> None:
    mu = 0.5
    final = run_quadratic(FedProx(FedProxOptions(mu=mu)), COUNTS, TAUS, ETA, rounds=400)
    c = 1 - ETA * (1 + mu)
    b = torch.tensor([(1 - c ** t) / (1 + mu) for t in TAUS], dtype=torch.float64)
    assert torch.allclose(final, P * b / (P * b).sum(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("option", [1, 2])
def test_scaffold_full_participation_reaches_the_true_optimum(option: int) -> None:
    algo = Scaffold(ScaffoldOptions(option=option), num_examples=COUNTS)
    final = run_quadratic(algo, COUNTS, TAUS, ETA, rounds=300)
    assert torch.allclose(final, OPTIMUM, atol=1e-6, rtol=0)


def test_feddyn_full_participation_reaches_the_true_optimum() -> None:
    algo = FedDyn(FedDynOptions(alpha=0.5), num_examples=COUNTS)
    final = run_quadratic(algo, COUNTS, TAUS, ETA, rounds=600)
    assert torch.allclose(final, OPTIMUM, atol=1e-6, rtol=0)
