from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.core.errors import ConfigError
from fedloom.runtime.sampling import (
    ConnectedSampler,
    RoundRobinSampler,
    SamplerName,
    UniformSampler,
    WeightedSampler,
    make_sampler,
)


@given(st.integers(1, 50), st.data())
def test_cohorts_are_sorted_distinct_and_seeded(n: int, data: st.DataObject) -> None:
    size = data.draw(st.integers(1, n))
    for name in SamplerName:
        s = make_sampler(name, num_examples=[1 + i % 3 for i in range(n)], size=size, seed=3)
        again = make_sampler(name, num_examples=[1 + i % 3 for i in range(n)], size=size, seed=3)
        for rnd in (1, 2, 7):
            cohort = s.sample(rnd)
            assert cohort == sorted(set(cohort)) and len(cohort) == size
            assert all(0 <= c < n for c in cohort)
            assert cohort == again.sample(rnd)


def test_round_robin_visits_everyone_once_per_pass() -> None:
    s = RoundRobinSampler(num_clients=12, size=4, seed=0)
    seen = [c for rnd in (1, 2, 3) for c in s.sample(rnd)]
    assert sorted(seen) == list(range(12))


def test_weighted_sampler_prefers_large_clients() -> None:
    s = WeightedSampler(num_examples=[1, 1, 1, 97], size=1, seed=0)
    counts = Counter(c for rnd in range(1, 401) for c in s.sample(rnd))
    assert counts[3] > 340
    u = UniformSampler(num_clients=4, size=1, seed=0)
    assert Counter(c for rnd in range(1, 401) for c in u.sample(rnd))[3] < 160


def test_bad_sizes_are_named() -> None:
    with pytest.raises(ConfigError, match=r"cohort\.size = 5"):
        UniformSampler(num_clients=4, size=5, seed=0)
    with pytest.raises(ConfigError, match="only 1 clients have examples"):
        WeightedSampler(num_examples=[0, 0, 4], size=2, seed=0)


@settings(max_examples=200, deadline=None)
@given(num_clients=st.integers(1, 40), data=st.data())
def test_connected_sampler_keeps_present_clients_and_replaces_absent_ones(
        num_clients: int, data: st.DataObject) -> None:
    size = data.draw(st.integers(1, num_clients))
    up = set(data.draw(st.lists(st.integers(0, num_clients - 1), unique=True)))
    base = UniformSampler(num_clients=num_clients, size=size, seed=3)
    sampler = ConnectedSampler(base, available=lambda: up, seed=3)
    for rnd in (1, 2, 7):
        drawn, cohort = base.sample(rnd), sampler.sample(rnd)
        assert cohort == sorted(set(cohort)) and set(cohort) <= up
        assert {c for c in drawn if c in up} <= set(cohort)
        assert len(cohort) == min(size, len(up))
        assert cohort == sampler.sample(rnd)  # deterministic
        if set(drawn) <= up:
            assert cohort == drawn  # everyone up: exactly the simulation's cohort
