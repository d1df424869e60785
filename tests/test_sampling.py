from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedloom.core.errors import ConfigError
from fedloom.sampling import (
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
