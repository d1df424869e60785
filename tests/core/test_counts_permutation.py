"""Per-client counts without a list (Repeated, ExampleShares) and the keyed permutation."""

from __future__ import annotations

import pickle
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.core.counts import ExampleShares, Excluding, Repeated, total_examples
from fedloom.core.errors import ConfigError
from fedloom.core.permutation import KeyedPermutation, mix64
from fedloom.data.population import Repeated as ReExported


def test_repeated_is_a_sequence_with_its_total() -> None:
    r = Repeated(3, 4)
    assert list(r) == [3, 3, 3, 3] and len(r) == 4 and r[-1] == 3 and r[1:3] == [3, 3]
    assert r.total == 12 == total_examples(r) == sum(r)
    with pytest.raises(IndexError):
        r[4]
    back = pickle.loads(pickle.dumps(r))
    assert (back.value, back.length) == (3, 4)
    assert ReExported is Repeated  # fedloom.data.population still exports it


@given(st.lists(st.integers(0, 1000), min_size=1, max_size=30))
def test_shares_are_the_list_they_replace(counts: list[int]) -> None:
    if sum(counts) == 0:
        with pytest.raises(ConfigError, match="hold no training examples"):
            ExampleShares(counts)
        return
    total = float(sum(counts))
    shares = ExampleShares(counts)
    assert [shares[i] for i in range(len(counts))] == [n / total for n in counts]  # bitwise
    assert len(shares) == len(counts)


def test_shares_of_a_billion_equal_clients_cost_nothing() -> None:
    start = time.perf_counter()
    shares = ExampleShares(Repeated(20, 10**9))  # a list would be 32 GB
    assert shares[0] == shares[10**9 - 1] == 1e-9
    assert time.perf_counter() - start < 0.1


def test_exact_shares_by_hand() -> None:
    shares = ExampleShares([1, 3, 4])
    assert (shares[0], shares[1], shares[2]) == (0.125, 0.375, 0.5)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000), st.integers(0, 2**63 - 1))
def test_keyed_permutation_is_a_bijection(n: int, key: int) -> None:
    p = KeyedPermutation(n, key)
    assert sorted(p[i] for i in range(n)) == list(range(n))
    assert len(p) == n


def test_keyed_permutation_depends_on_its_key_and_nothing_else() -> None:
    a, b, again = KeyedPermutation(1000, 1), KeyedPermutation(1000, 2), KeyedPermutation(1000, 1)
    order = [a[i] for i in range(1000)]
    assert order == [again[i] for i in range(1000)]
    assert order != [b[i] for i in range(1000)]
    assert order != list(range(1000))  # shuffled: few fixed points, not the identity
    assert sum(order[i] == i for i in range(1000)) < 20
    # pinned: the same order on every platform (pure integer arithmetic)
    assert [KeyedPermutation(10, 42)[i] for i in range(10)] == [5, 9, 2, 4, 0, 3, 7, 6, 8, 1]
    assert mix64(0) == 0xE220A8397B1DCDAF  # splitmix64's first output for state 0


def test_keyed_permutation_of_a_billion_positions() -> None:
    p = KeyedPermutation(10**9, key=7)
    firsts = [p[i] for i in range(2000)]
    assert len(set(firsts)) == 2000 and all(0 <= x < 10**9 for x in firsts)
    assert max(firsts) > 9 * 10**8 and min(firsts) < 10**8  # spread over the whole range
    with pytest.raises(IndexError):
        p[10**9]
    with pytest.raises(ValueError, match="n = 0"):
        KeyedPermutation(0, 1)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 60), st.sets(st.integers(-5, 70), max_size=40))
def test_excluding_is_the_list_it_replaces(n: int, excluded: set[int]) -> None:
    view, kept = Excluding(n, excluded), [c for c in range(n) if c not in excluded]
    assert len(view) == len(kept) and list(view) == kept
    assert [view[i] for i in range(len(kept))] == kept == list(view[:])
    assert [view[-1 - i] for i in range(len(kept))] == kept[::-1]
    assert all((c in view) == (c in kept) for c in range(-2, n + 2))
    with pytest.raises(IndexError):
        view[len(kept)]
