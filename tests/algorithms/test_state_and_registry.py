from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedloom.algorithms import registry
from fedloom.algorithms.base import Algorithm
from fedloom.algorithms.client_store import DiskStore, MemoryStore
from fedloom.app.config import load_config
from fedloom.core.errors import ConfigError


@pytest.mark.parametrize("store", ["memory", "disk"])
def test_store_round_trip(store: str, tmp_path: Path) -> None:
    s = MemoryStore() if store == "memory" else DiskStore(tmp_path, num_clients=1_000_000)
    assert s.get(5, "c") is None
    s.put(5, "c", torch.tensor([1.0, 2.0]))
    s.put(999_999, "c", torch.tensor([3.0, 4.0]))
    assert torch.equal(s.get(5, "c"), torch.tensor([1.0, 2.0]))  # type: ignore[arg-type]
    assert s.get(6, "c") is None
    if store == "disk":  # reopened from its files
        again = DiskStore(tmp_path, num_clients=1_000_000)
        assert torch.equal(again.get(999_999, "c"), torch.tensor([3.0, 4.0]))  # type: ignore[arg-type]
        # a million registered clients cost sparse disk: far less than 1e6 * 2 floats written
        used = sum(p.stat().st_blocks * 512 for p in tmp_path.iterdir())
        assert used < 1_000_000


@pytest.mark.parametrize("store", ["memory", "disk"])
def test_store_lists_and_clears_its_entries(store: str, tmp_path: Path) -> None:
    s = MemoryStore() if store == "memory" else DiskStore(tmp_path, num_clients=10)
    s.put(7, "h", torch.tensor([1.0]))
    s.put(2, "c", torch.tensor([2.0, 3.0]))
    s.put(4, "c", torch.tensor([4.0, 5.0]))
    listed = [(entry, value.tolist()) for entry, value in s.items()]
    assert listed == [(("c", 2), [2.0, 3.0]), (("c", 4), [4.0, 5.0]), (("h", 7), [1.0])]
    if store == "disk":  # a reopened store lists what its files hold
        assert [e for e, _ in DiskStore(tmp_path, num_clients=10).items()] == [e for e, _ in listed]
    s.clear()
    assert list(s.items()) == [] and s.get(2, "c") is None
    s.put(4, "c", torch.tensor([6.0, 7.0]))
    assert [(e, v.tolist()) for e, v in s.items()] == [(("c", 4), [6.0, 7.0])]


@pytest.mark.parametrize("name", sorted(registry()))
def test_every_algorithm_is_configurable(name: str) -> None:
    cfg = load_config(None, [f"algorithm.name={name}"])
    assert cfg.algorithm.name == name


@pytest.mark.parametrize(("override", "message"), [
    ("algorithm.mu=-1", "algorithm.mu = -1.0: must be >= 0"),
    ("algorithm.option=3", "algorithm.option = 3: must be 1 or 2"),
    ("algorithm.alpha=0", "algorithm.alpha = 0.0: must be > 0"),
    ("algorithm.beta1=1.5", "algorithm.beta1 = 1.5: must be in [0, 1)"),
])
def test_out_of_range_options_are_named(override: str, message: str) -> None:
    name = {"mu": "fedprox", "option": "scaffold", "alpha": "feddyn", "beta1": "fedadam"}[
        override.split(".")[1].split("=")[0]]
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"algorithm.name={name}", override])
    assert message in str(info.value)


def test_an_option_of_another_algorithm_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"algorithm\.mu = 0\.1: unknown key"):
        load_config(None, ["algorithm.name=fedavg", "algorithm.mu=0.1"])


def _build(name: str) -> Algorithm:
    from fedloom.algorithms import AlgorithmContext, build_algorithm
    from fedloom.core.layout import ParamLayout

    options = load_config(None, [f"algorithm.name={name}"]).algorithm.options
    layout = ParamLayout.from_module(torch.nn.Sequential(torch.nn.Linear(1, 1),
                                                         torch.nn.Linear(1, 2)))  # 6 values
    return build_algorithm(name, options, AlgorithmContext(num_examples=(3, 5, 2),
                                                           layout=layout))


def _reducible(name: str) -> bool:
    return _build(name).reducible


REDUCIBLE = [name for name in sorted(registry()) if _reducible(name)]


def test_the_reducible_algorithms_are_the_mean_based_ones() -> None:
    assert REDUCIBLE == ["fedadagrad", "fedadam", "fedavg", "fedavgm", "fedprox", "fedyogi"]


@pytest.mark.parametrize("name", REDUCIBLE)
def test_a_reducible_algorithm_steps_the_same_from_the_mean(name: str) -> None:
    """What a reduce collective gives the aggregate (results that all carry the one
    example-weighted mean, as the distributed fleet's reduce mode hands them) steps the server
    exactly as ``aggregate`` does from the results themselves."""
    import dataclasses

    from fedloom.algorithms.aggregate import example_weighted_params
    from fedloom.core.packages import ClientResult

    algorithm = _build(name)
    assert algorithm.reducible
    gen = torch.Generator().manual_seed(0)
    state = algorithm.init(torch.randn(6, generator=gen))
    for rnd in (1, 2):  # twice: the optimisers' moments matter from the second step
        results = [ClientResult(round=rnd, client_id=c, params=torch.randn(6, generator=gen),
                                num_examples=n, num_steps=1) for c, n in enumerate((3, 5, 2))]
        by_results = algorithm.aggregate(rnd, state, results)
        mean = example_weighted_params(results)
        by_mean = algorithm.aggregate(rnd, state, [dataclasses.replace(r, params=mean)
                                                   for r in results])
        assert torch.equal(by_results.params, by_mean.params)
        assert by_results.extras.keys() == by_mean.extras.keys()
        state = by_results
