"""Central DP-FedAvg (fixed and adaptive clipping) and local DP, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from fedloom import LocalSpec
from fedloom.algorithms.combined import Combined
from fedloom.algorithms.fedavg import FedAvg
from fedloom.core.errors import ConfigError
from fedloom.core.packages import ClientConfig, ClientResult, Downlink
from fedloom.core.rng import SERVER, torch_generator
from fedloom.privacy.central import GaussianSum, update_noise_multiplier
from fedloom.privacy.local import LocalNoise, local_dp

UPDATES = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, -2.0]])  # norms 5, 0.5, 2
W = torch.ones(3, dtype=torch.float64)


def test_fixed_clip_sum_over_expected_cohort_without_noise() -> None:
    rule = GaussianSum(clip=1.0, noise_multiplier=0.0, expected_cohort=4, seed=0)
    out = rule.combine(1, UPDATES.clone(), W, {})
    # (0.6, 0.8) + (0.3, 0.4) + (0, -1), divided by the expected 4 (not the 3 results)
    torch.testing.assert_close(out.update, torch.tensor([0.9, 0.2]) / 4)
    assert out.metrics["clip_norm"] == 1.0


def test_noise_is_z_c_on_the_sum_from_the_servers_stream() -> None:
    rule = GaussianSum(clip=1.0, noise_multiplier=2.0, expected_cohort=4, seed=7)
    out = rule.combine(3, UPDATES.clone(), W, {})
    noise = torch.randn(2, generator=torch_generator(7, 3, SERVER, "dp_central"))
    torch.testing.assert_close(out.update, (torch.tensor([0.9, 0.2]) + 2.0 * noise) / 4)


def test_noise_std_is_z_c_over_m() -> None:
    rule = GaussianSum(clip=0.5, noise_multiplier=3.0, expected_cohort=10, seed=1)
    zeros = torch.zeros(10, 200_000)
    out = rule.combine(1, zeros, torch.ones(10, dtype=torch.float64), {})
    assert float(out.update.std()) == pytest.approx(3.0 * 0.5 / 10, rel=0.01)


def test_adaptive_clip_moves_geometrically_towards_the_quantile() -> None:
    """No noise, norms 5, 0.5, 2 and C = 1: only 0.5 is unclipped, a share of 1/3 against the
    target 0.5, so C <- C exp(-lr (1/3 - 1/2)) (the norm grows)."""
    rule = GaussianSum(clip=1.0, noise_multiplier=0.0, expected_cohort=3, seed=0,
                       adaptive=True, target_quantile=0.5, clip_lr=0.2)
    algo = Combined(FedAvg(), rule)
    state = algo.init(torch.zeros(2))
    assert float(state.extras["rule/clip"]) == 1.0
    results = [ClientResult(round=1, client_id=k, params=u, num_examples=5, num_steps=1)
               for k, u in enumerate(UPDATES)]
    state = algo.aggregate(1, state, results)
    want = math.exp(-0.2 * (1 / 3 - 0.5))
    assert float(state.extras["rule/clip"]) == pytest.approx(want)
    assert algo.row_metrics(state)["clip_norm"] == 1.0
    torch.testing.assert_close(state.params, torch.tensor([0.9, 0.2]) / 3)
    state = algo.aggregate(2, state, results)  # the new norm is used in the next round
    assert algo.row_metrics(state)["clip_norm"] == pytest.approx(want)


def test_adaptive_converges_to_the_median_norm() -> None:
    rule = GaussianSum(clip=0.1, noise_multiplier=0.0, expected_cohort=101, seed=0,
                       adaptive=True, target_quantile=0.5, clip_lr=0.2)
    norms = torch.linspace(1.0, 3.0, 101)  # median 2
    updates = torch.stack([norms, torch.zeros(101)], dim=1)
    extras = rule.init_extras(2)
    for rnd in range(1, 200):
        extras = dict(rule.combine(rnd, updates, torch.ones(101), extras).extras)
    assert float(extras["clip"]) == pytest.approx(2.0, rel=0.02)


def test_adaptive_noise_split_and_refusal() -> None:
    # z = 1, count stddev 5 (cohort 100): z_u = (1 - 1/100)^-1/2
    assert update_noise_multiplier(1.0, 5.0) == pytest.approx((1 - 0.01) ** -0.5)
    with pytest.raises(ConfigError, match="count_stddev"):
        update_noise_multiplier(1.0, 0.5)


def test_local_dp_clips_and_noises_on_the_client() -> None:
    finish = LocalNoise(clip=1.0, noise_multiplier=0.5, seed=3)
    start = torch.tensor([1.0, 1.0])
    down = Downlink(round=2, client_id=9, params=start, config=ClientConfig())
    raw = ClientResult(round=2, client_id=9, params=start + torch.tensor([3.0, 4.0]),
                       num_examples=5, num_steps=1)
    out = finish(raw, down)
    noise = torch.randn(2, generator=torch_generator(3, 2, 9, "dp_local"))
    torch.testing.assert_close(out.params, start + torch.tensor([0.6, 0.8]) + 0.5 * noise)


def test_local_dp_keeps_the_algorithms_own_finish() -> None:
    from fedloom.algorithms.fednova import FedNova

    spec = local_dp(FedNova().local, clip=1.0, noise_multiplier=0.0, seed=0)
    assert isinstance(spec.finish, LocalNoise)
    down = Downlink(round=1, client_id=0, params=torch.zeros(2), config=ClientConfig())
    res = ClientResult(round=1, client_id=0, params=torch.tensor([0.0, 5.0]), num_examples=1,
                       num_steps=4)
    out = spec.finish(res, down)
    assert float(out.extras["fednova_a"]) == 4.0
    torch.testing.assert_close(out.params, torch.tensor([0.0, 1.0]))
    assert local_dp(LocalSpec(), clip=1, noise_multiplier=1, seed=0).finish is not None
