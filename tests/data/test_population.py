"""The generated population: clients made on demand, the same examples every time and on every
fleet, a cost that does not grow with the number of registered clients."""

from __future__ import annotations

import pickle
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.app.build import build_run
from fedloom.app.config import load_config
from fedloom.core.counts import LARGE_POPULATION
from fedloom.core.errors import ConfigError
from fedloom.core.rng import choose
from fedloom.data import DataConfig, load_federated
from fedloom.data.config import DatasetName
from fedloom.data.population import ClientRanges, GeneratedClients
from fedloom.runtime.sampling import UniformSampler

W5 = ["data.name=generated", "model.name=logreg", "cohort.size=10", "client.steps=1",
      "client.batch_size=10", "client.lr=0.05", "fleet.threads=1"]


def _source(num_clients: int = 50) -> GeneratedClients:
    return GeneratedClients(num_clients=num_clients, per_client=7, num_features=5,
                            num_classes=3, alpha=1.0, beta=1.0, seed=4)


def test_a_clients_examples_do_not_depend_on_how_they_are_asked_for() -> None:
    source = _source()
    whole = source.batch(torch.arange(7 * 3, 7 * 4))  # client 3
    mixed = source.batch(torch.tensor([7 * 9 + 2, 7 * 3 + 5, 7 * 3 + 0, 7 * 40 + 6]))
    fresh = pickle.loads(pickle.dumps(source))  # another process: empty cache
    assert torch.equal(mixed[0][1], whole[0][5]) and torch.equal(mixed[0][2], whole[0][0])
    assert torch.equal(mixed[1][1:3], torch.stack([whole[1][5], whole[1][0]]))
    again = fresh.batch(torch.tensor([7 * 9 + 2, 7 * 40 + 6]))
    assert torch.equal(again[0], mixed[0][[0, 3]]) and torch.equal(again[1], mixed[1][[0, 3]])
    assert len(pickle.dumps(source)) < 5_000


def test_clients_differ_and_labels_are_learnable_per_client() -> None:
    source = _source()
    x3, y3 = source.client(3)
    x4, _ = source.client(4)
    assert not torch.equal(x3, x4)
    assert x3.shape == (7, 5) and y3.dtype == torch.long and int(y3.max()) < 3


def test_a_million_registered_clients_cost_nothing_per_client() -> None:
    data = load_federated(DataConfig(name=DatasetName.GENERATED, num_clients=1_000_000,
                                     examples_per_client=20, test_clients=100), seed=0)
    assert data.num_clients == 1_000_000 and len(data.test) == 1000
    assert isinstance(data.client_train, ClientRanges)
    assert torch.equal(data.client_train[999_999], torch.arange(19_999_980, 20_000_000))
    counts = data.example_counts()
    assert len(counts) == 1_000_000 and counts[123_456] == 20
    assert len(pickle.dumps((data.train, data.client_train))) < 5_000


@pytest.mark.parametrize(("override", "words"), [
    ("data.partition=iid", "natural clients"),
    ("data.client_test_fraction=0.2", "no local test splits"),
    ("data.examples_per_client=0", "examples_per_client"),
])
def test_generated_population_settings_are_checked(override: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_config(None, [*W5, override])


def test_a_million_clients_train_and_the_process_fleet_agrees_with_serial() -> None:
    big = build_run(load_config(None, [*W5, "data.num_clients=1000000", "rounds=2"]))
    rows = big.run().rows
    assert [r["num_results"] for r in rows] == [10, 10]
    small = [*W5, "data.num_clients=40", "rounds=2"]
    serial = build_run(load_config(None, small)).run().final.params
    process = build_run(load_config(None, [*small, "fleet.kind=process",
                                                  "fleet.workers=2"])).run().final.params
    assert torch.equal(serial, process)
    vectorized = build_run(load_config(None, [*small, "fleet.kind=vectorized"])
                                  ).run().final.params
    assert torch.allclose(serial, vectorized, atol=1e-5)


def test_eval_train_is_refused_for_a_generated_population() -> None:
    with pytest.raises(ConfigError, match="made on demand"):
        build_run(load_config(None, [*W5, "data.num_clients=100", "eval.train=true"]))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 10_000), data=st.data())
def test_choose_draws_distinct_sorted_members(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, min(n, 50)))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    out = choose(n, k, gen)
    assert out == sorted(set(out)) and len(out) == k and all(0 <= c < n for c in out)


def test_choose_is_uniform() -> None:
    gen = torch.Generator().manual_seed(0)
    counts = Counter(c for _ in range(6000) for c in choose(10, 3, gen))
    assert all(abs(counts[c] - 1800) < 150 for c in range(10)), counts  # 6000 * 3 / 10


def test_large_populations_are_sampled_without_a_permutation() -> None:
    sampler = UniformSampler(num_clients=LARGE_POPULATION * 16, size=100, seed=1)
    cohort = sampler.sample(3)
    assert len(set(cohort)) == 100 and cohort == sorted(cohort) == sampler.sample(3)
    assert cohort != sampler.sample(4)
