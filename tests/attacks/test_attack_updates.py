"""Each attack by hand on tiny inputs, and the malicious set per seed."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from fedloom.attacks.config import (
    AlieOptions,
    AttackConfig,
    AttackName,
    GaussianOptions,
    IpmOptions,
    SignFlipOptions,
)
from fedloom.attacks.fleet import AttackedFleet
from fedloom.attacks.malicious import malicious_clients
from fedloom.attacks.updates import alie, alie_z, boosted, gaussian, ipm, sign_flip
from fedloom.core.errors import ConfigError
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientConfig, ClientFailure, ClientResult, Downlink, Outcome
from fedloom.core.rng import torch_generator
from fedloom.fleets.base import FleetBase


def test_update_attacks_by_hand() -> None:
    u = torch.tensor([1.0, -2.0])
    assert sign_flip(u).tolist() == [-1.0, 2.0]
    assert sign_flip(u, scale=3.0).tolist() == [-3.0, 6.0]
    assert boosted(u, boost=10.0).tolist() == [10.0, -20.0]
    honest = torch.tensor([[1.0, 0.0], [3.0, 2.0]])     # mean (2, 1), population std (1, 1)
    assert ipm(honest, epsilon=0.5).tolist() == [-1.0, -0.5]
    assert alie(honest, z=1.0).tolist() == [1.0, 0.0]
    assert alie(honest, z=0.5).tolist() == [1.5, 0.5]


def test_alie_z_is_the_papers_formula() -> None:
    # n = 10, m = 2: s = floor(10 / 2 + 1) - 2 = 4, z = Phi^-1(6 / 10)
    assert alie_z(10, 2) == pytest.approx(0.2533471031357997, rel=1e-12)
    # n = 50, m = 12 (Baruch et al.'s CIFAR setting): s = 14, z = Phi^-1(36 / 50) ~ 0.58
    assert alie_z(50, 12) == pytest.approx(0.5828415072712162, rel=1e-12)
    with pytest.raises(ConfigError, match="0 < m < n"):
        alie_z(3, 3)


def test_gaussian_is_seeded() -> None:
    u = torch.zeros(1000)
    a = gaussian(u, std=2.0, generator=torch_generator(0, 1, 5, "attack"))
    b = gaussian(u, std=2.0, generator=torch_generator(0, 1, 5, "attack"))
    assert torch.equal(a, b) and abs(float(a.std()) - 2.0) < 0.2


def test_malicious_set_is_fixed_by_the_seed() -> None:
    a = malicious_clients(seed=0, num_clients=100, fraction=0.2)
    assert len(a) == 20 and a == malicious_clients(seed=0, num_clients=100, fraction=0.2)
    assert a != malicious_clients(seed=1, num_clients=100, fraction=0.2)
    assert malicious_clients(seed=0, num_clients=100, fraction=0.1) < a   # nested by fraction
    assert malicious_clients(seed=0, num_clients=100, fraction=0.0) == frozenset()


class Plus(FleetBase):
    """Client k's update is ``k + 1`` in every coordinate; client 3 fails."""

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]:
        return [ClientFailure(round=round, client_id=t.client_id, stage="fit", message="x")
                if t.client_id == 3 else
                ClientResult(round=round, client_id=t.client_id, params=t.params + t.client_id + 1,
                             num_examples=1, num_steps=1, metrics={"m": Mean(1.0, 1.0)})
                for t in tasks]


def _fit(attack: AttackConfig, malicious: set[int]) -> dict[int, list[float]]:
    g = torch.tensor([10.0, 20.0])
    tasks = [Downlink(round=1, client_id=k, params=g, config=ClientConfig()) for k in range(4)]
    out = AttackedFleet(Plus(), attack, frozenset(malicious), seed=0).fit(1, tasks)
    assert isinstance(out[3], ClientFailure)  # failures pass through
    return {o.client_id: (o.params - g).tolist() for o in out if isinstance(o, ClientResult)}


def test_the_fleet_rewrites_only_the_malicious_results() -> None:
    got = _fit(AttackConfig(name=AttackName.SIGN_FLIP, options=SignFlipOptions(scale=2.0)), {1})
    assert got == {0: [1.0, 1.0], 1: [-4.0, -4.0], 2: [3.0, 3.0]}
    # honest updates 1 and 3: mean 2, std 1
    got = _fit(AttackConfig(name=AttackName.IPM, options=IpmOptions(epsilon=0.5)), {1})
    assert got[1] == [-1.0, -1.0] and got[0] == [1.0, 1.0]
    got = _fit(AttackConfig(name=AttackName.ALIE, options=AlieOptions(z=1.0)), {1, 3})
    assert got[1] == [1.0, 1.0]
    # the paper's z: n = 3 results, m = 1: s = 1, z = Phi^-1(2 / 3) = 0.4307...
    got = _fit(AttackConfig(name=AttackName.ALIE), {1})
    assert got[1] == pytest.approx([2 - alie_z(3, 1)] * 2, rel=1e-6)
    gauss = AttackConfig(name=AttackName.GAUSSIAN, options=GaussianOptions(std=1.0))
    assert _fit(gauss, {0}) == _fit(gauss, {0}) and _fit(gauss, {0})[2] == [3.0, 3.0]
