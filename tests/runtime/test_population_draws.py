"""Samplers and client clocks that cost no memory per registered client above
LARGE_POPULATION, and draw exactly as before up to it.

Above the threshold the tests use a billion registered clients: anything kept per client (a
weight, a permutation, a speed) would need gigabytes and seconds, and the tests bound the time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from fedloom.core.counts import Repeated
from fedloom.core.errors import ConfigError
from fedloom.core.rng import SERVER, Purpose, numpy_generator, torch_generator
from fedloom.runtime.clock import ClientClock, ClockConfig, SpeedModel
from fedloom.runtime.sampling import (
    LARGE_POPULATION,
    RoundRobinSampler,
    UniformSampler,
    WeightedSampler,
)

BILLION = 10**9


@contextmanager
def within(seconds: float) -> Iterator[None]:
    start = time.perf_counter()
    yield
    assert time.perf_counter() - start < seconds


# ---- up to LARGE_POPULATION: the draws of before ---------------------------------------------

def test_small_round_robin_is_the_seeded_randperm() -> None:
    order = torch.randperm(50, generator=torch_generator(4, 0, SERVER, Purpose.COHORT)).tolist()
    s = RoundRobinSampler(num_clients=50, size=7, seed=4)
    assert s.sample(1) == sorted(order[:7]) and s.sample(8) == sorted(order[49:] + order[:6])


@pytest.mark.parametrize("counts", [[3, 1, 4, 1, 5, 9, 2, 6], Repeated(10, 8)])
def test_small_weighted_is_the_multinomial_draw(counts: list[int] | Repeated) -> None:
    s = WeightedSampler(num_examples=counts, size=3, seed=2)
    for rnd in (1, 5):
        gen = torch_generator(2, rnd, SERVER, Purpose.COHORT)
        want = torch.multinomial(torch.tensor(list(counts), dtype=torch.float64), 3,
                                 replacement=False, generator=gen)
        assert s.sample(rnd) == sorted(want.tolist())


@pytest.mark.parametrize("speed", [SpeedModel.LOGNORMAL, SpeedModel.PARETO])
def test_small_clock_is_one_array_from_the_server_stream(speed: SpeedModel) -> None:
    cfg = ClockConfig(speed=speed, sigma=0.5, shape=2.0)
    rng = numpy_generator(9, 0, SERVER, Purpose.SPEED)
    want = (rng.lognormal(0.0, 0.5, 40) if speed == SpeedModel.LOGNORMAL
            else 1.0 + rng.pareto(2.0, 40))
    clock = ClientClock(cfg, num_clients=40, seed=9)
    assert clock.step_time is not None and np.array_equal(clock.step_time, want)
    assert clock.duration(17, 3) == float(want[17]) * 3


# ---- above it: nothing per client ------------------------------------------------------------

def test_round_robin_of_a_billion_clients() -> None:
    with within(2.0):
        s = RoundRobinSampler(num_clients=BILLION, size=100, seed=0)
        rounds = [s.sample(r) for r in range(1, 21)]
    seen = [c for cohort in rounds for c in cohort]
    assert len(set(seen)) == 2000 and all(0 <= c < BILLION for c in seen)  # no repeats
    assert rounds[3] == RoundRobinSampler(num_clients=BILLION, size=100, seed=0).sample(4)
    assert rounds[0] != RoundRobinSampler(num_clients=BILLION, size=100, seed=1).sample(1)


def test_round_robin_above_the_threshold_visits_everyone_once_per_pass() -> None:
    n = LARGE_POPULATION + 3
    size = n // 4 + 1  # 4 rounds: the last wraps around to the next pass' first client
    s = RoundRobinSampler(num_clients=n, size=size, seed=5)
    seen = [c for rnd in range(1, 5) for c in s.sample(rnd)]
    assert set(seen) == set(range(n)) and len(seen) == 4 * size == n + 1
    assert len(set(seen[:-size])) == 3 * size  # the first three rounds: no client twice


def test_weighted_over_equal_counts_is_uniform_without_a_weight_per_client() -> None:
    with within(1.0):
        s = WeightedSampler(num_examples=Repeated(20, BILLION), size=50, seed=3)
        u = UniformSampler(num_clients=BILLION, size=50, seed=3)
        assert all(s.sample(r) == u.sample(r) for r in (1, 2, 3))
    assert s.weights is None and len(s.sample(1, size=60)) == 60
    with pytest.raises(ConfigError, match="only 0 clients have examples"):
        WeightedSampler(num_examples=Repeated(0, BILLION), size=1, seed=0)


@pytest.mark.parametrize("speed", [SpeedModel.LOGNORMAL, SpeedModel.PARETO])
def test_clock_of_a_billion_clients_draws_each_speed_from_its_own_stream(
        speed: SpeedModel) -> None:
    cfg = ClockConfig(speed=speed, sigma=1.0, shape=1.5)
    with within(2.0):
        clock = ClientClock(cfg, num_clients=BILLION, seed=1)
        ids = range(BILLION - 3000, BILLION)
        steps = [clock.step_seconds(c) for c in ids]
    assert clock.step_time is None
    first = numpy_generator(1, 0, 123, Purpose.SPEED)
    want = first.lognormal(0.0, 1.0) if speed == SpeedModel.LOGNORMAL else 1 + first.pareto(1.5)
    assert clock.step_seconds(123) == want
    assert clock.duration(123, 4) == want * 4 == ClientClock(
        cfg, num_clients=BILLION, seed=1).duration(123, 4)  # fixed for the run
    if speed == SpeedModel.LOGNORMAL:  # median exp(0) = 1
        assert 0.9 < statistics.median(steps) < 1.1
    else:  # P(1 + Pareto(1.5) > 3) = 3^-1.5 = 0.192
        assert min(steps) >= 1.0
        assert 0.16 < sum(s > 3 for s in steps) / len(steps) < 0.23
    constant = ClientClock(ClockConfig(), num_clients=BILLION, seed=1)
    assert constant.duration(BILLION - 1, 7) == 7.0 and constant.step_time is None
