"""Partitioners: disjoint and covering, deterministic, and shaped as each scheme promises."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedloom.core.errors import ConfigError, DataError
from fedloom.data.partition import dirichlet, iid, quantity, quantity_sizes, shards

Partitioner = Callable[[np.ndarray, int, np.random.Generator], list[np.ndarray]]

PARTITIONERS: dict[str, Partitioner] = {
    "iid": lambda y, k, rng: iid(len(y), k, rng),
    "dirichlet": lambda y, k, rng: dirichlet(y, k, 0.5, rng, min_examples=0),
    "dirichlet_min": lambda y, k, rng: dirichlet(y, k, 5.0, rng, min_examples=1),
    "shards": lambda y, k, rng: shards(y, k, 1 if len(y) < 2 * k else 2, rng),
    "quantity": lambda y, k, rng: quantity(len(y), k, 1.0, rng, min_examples=1),
    "quantity_min0": lambda y, k, rng: quantity(len(y), k, 3.0, rng, min_examples=0),
}


def assert_partition(parts: list[np.ndarray], n: int, num_clients: int) -> None:
    assert len(parts) == num_clients
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1
        assert np.all(np.diff(p) > 0)  # sorted, no repeats
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, int, int]:
    n = draw(st.integers(1, 300))
    num_classes = draw(st.integers(1, 12))
    labels = np.asarray(draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)))
    num_clients = draw(st.integers(1, min(n, 40)))
    return labels, num_clients, draw(st.integers(0, 2**32 - 1))


@pytest.mark.parametrize("name", PARTITIONERS)
@settings(max_examples=60, deadline=None)
@given(problem=problems())
def test_disjoint_cover_and_deterministic(name: str, problem: tuple[np.ndarray, int, int]) -> None:
    labels, num_clients, seed = problem
    split = PARTITIONERS[name]
    if name == "dirichlet_min":
        assume(len(labels) >= 6 * num_clients)  # min_examples=1 must be likely in each draw
    parts = split(labels, num_clients, np.random.default_rng(seed))
    assert_partition(parts, len(labels), num_clients)
    again = split(labels, num_clients, np.random.default_rng(seed))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    if name in ("dirichlet_min", "quantity"):
        assert min(len(p) for p in parts) >= 1


@pytest.mark.parametrize("name", PARTITIONERS)
def test_another_seed_gives_another_split(name: str) -> None:
    labels = np.random.default_rng(0).integers(0, 10, 1000)
    first = PARTITIONERS[name](labels, 20, np.random.default_rng(1))
    second = PARTITIONERS[name](labels, 20, np.random.default_rng(2))
    assert not all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_iid_sizes_differ_by_at_most_one() -> None:
    parts = iid(103, 10, np.random.default_rng(0))
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3


@settings(max_examples=60, deadline=None)
@given(
    num_classes=st.integers(2, 10),
    shards_per_class=st.integers(1, 4),
    shard_size=st.integers(1, 6),
    shards_per_client=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_shards_give_at_most_k_labels(
    num_classes: int, shards_per_class: int, shard_size: int, shards_per_client: int, seed: int
) -> None:
    total = num_classes * shards_per_class
    assume(total % shards_per_client == 0)
    num_clients = total // shards_per_client
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(num_classes), shards_per_class * shard_size))
    parts = shards(labels, num_clients, shards_per_client, rng)
    assert_partition(parts, len(labels), num_clients)
    for p in parts:
        assert len(p) == shards_per_client * shard_size
        assert len(np.unique(labels[p])) <= shards_per_client


def test_shards_mnist_sized() -> None:
    rng = np.random.default_rng(0)
    class_sizes = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # MNIST train
    labels = rng.permutation(np.repeat(np.arange(10), class_sizes))
    parts = shards(labels, 100, 2, rng)
    assert {len(p) for p in parts} == {600}
    distinct = [len(np.unique(labels[p])) for p in parts]
    assert max(distinct) <= 4 and np.mean([d <= 2 for d in distinct]) > 0.8


def _label_fractions(labels: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    counts = np.stack([np.bincount(labels[p], minlength=10) for p in parts])
    fractions: np.ndarray = counts / counts.sum(axis=1, keepdims=True)
    return fractions


def test_dirichlet_large_alpha_is_near_uniform() -> None:
    labels = np.repeat(np.arange(10), 1000)
    parts = dirichlet(labels, 10, 1000.0, np.random.default_rng(0))
    assert np.abs(_label_fractions(labels, parts) - 0.1).max() < 0.05
    assert max(len(p) for p in parts) / min(len(p) for p in parts) < 1.2


def test_dirichlet_small_alpha_is_skewed() -> None:
    labels = np.repeat(np.arange(10), 1000)
    parts = dirichlet(labels, 10, 0.05, np.random.default_rng(0))
    fractions = _label_fractions(labels, parts)
    assert np.abs(fractions - 0.1).max() > 0.5
    assert (fractions > 0).sum(axis=1).mean() < 6


def test_dirichlet_min_examples_respected() -> None:
    labels = np.repeat(np.arange(10), 50)
    parts = dirichlet(labels, 20, 0.3, np.random.default_rng(0), min_examples=10)
    assert min(len(p) for p in parts) >= 10


def test_dirichlet_gives_up_with_a_clear_error() -> None:
    labels = np.repeat(np.arange(10), 10)
    with pytest.raises(DataError, match=r"min_examples = 10 .*alpha = 0\.01"):
        dirichlet(labels, 10, 0.01, np.random.default_rng(0), min_examples=10)


def test_quantity_sizes_hand_computed() -> None:
    # spare 7 shared 1:1:2 -> 1.75, 1.75, 3.5 -> floors 1, 1, 3; two leftovers go to the .75s.
    assert quantity_sizes(10, np.array([1.0, 1.0, 2.0]), 1).tolist() == [3, 3, 4]


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 5000), num_clients=st.integers(1, 50), sigma=st.floats(0, 5),
       min_examples=st.integers(0, 20), seed=st.integers(0, 2**32 - 1))
def test_quantity_sizes_sum_to_n(
    n: int, num_clients: int, sigma: float, min_examples: int, seed: int
) -> None:
    assume(num_clients <= n and num_clients * min_examples <= n)
    parts = quantity(n, num_clients, sigma, np.random.default_rng(seed), min_examples)
    sizes = [len(p) for p in parts]
    assert sum(sizes) == n and min(sizes) >= min_examples
    assert_partition(parts, n, num_clients)


def test_quantity_sigma_controls_skew() -> None:
    equal = [len(p) for p in quantity(1000, 10, 0.0, np.random.default_rng(0))]
    assert equal == [100] * 10
    skewed = [len(p) for p in quantity(10000, 10, 2.0, np.random.default_rng(0))]
    assert max(skewed) > 5 * min(skewed)


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (lambda rng: iid(3, 4, rng), DataError, "3 examples over num_clients = 4"),
        (lambda rng: iid(3, 0, rng), ConfigError, "num_clients = 0"),
        (lambda rng: shards(np.zeros(10, np.int64), 4, 3, rng), DataError, r"4 \* 3 = 12 .* 10"),
        (lambda rng: shards(np.zeros(10, np.int64), 2, 0, rng), ConfigError, "shards_per_client"),
        (lambda rng: quantity(10, 4, 1.0, rng, 3), DataError, r"4 \* 3 = 12 exceeds the 10"),
        (lambda rng: quantity(10, 2, -1.0, rng), ConfigError, "quantity_sigma = -1.0"),
        (lambda rng: dirichlet(np.zeros(9, np.int64), 2, 0.0, rng), ConfigError, "alpha = 0.0"),
        (lambda rng: dirichlet(np.zeros(9, np.int64), 2, 1.0, rng, -1), ConfigError,
         "min_examples = -1"),
        (lambda rng: dirichlet(np.zeros((3, 3), np.int64), 2, 1.0, rng), DataError, "1-d integer"),
    ],
)
def test_impossible_requests_name_the_numbers(
    call: Callable[[np.random.Generator], object], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        call(np.random.default_rng(0))
