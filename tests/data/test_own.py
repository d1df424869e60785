"""FederatedData.from_arrays and the split behind every from_* constructor (fedloom.data.own)."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom import ClientConfig, FedAvg, ModelConfig, Simulation, model_factory
from fedloom.core.errors import ConfigError, DataError
from fedloom.core.rng import SERVER, Purpose, numpy_generator
from fedloom.data import DataConfig, FederatedData, own, own_sources, partition_indices
from fedloom.data.config import DatasetName


def test_docstring_examples() -> None:
    for module in (own, own_sources):
        assert doctest.testmod(module).failed == 0
    finder = doctest.DocTestFinder()
    tests = finder.find(FederatedData.from_arrays, "from_arrays",
                        globs={"torch": torch, "FederatedData": FederatedData})
    runner = doctest.DocTestRunner()
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).attempted > 0
    assert runner.summarize(verbose=False).failed == 0


def test_natural_split_by_client_ids_exactly() -> None:
    x = torch.tensor([[10.0], [11.0], [12.0], [13.0], [14.0]])
    y = torch.tensor([0, 1, 1, 0, 2])
    test = (torch.tensor([[20.0], [21.0]]), torch.tensor([3, 0]))
    data = FederatedData.from_arrays(x, y, test=test, clients=["b", "a", "b", "c", "a"])
    # ids sorted: a -> 0, b -> 1, c -> 2; nothing is held out when a test set is given
    assert [c.tolist() for c in data.client_train] == [[1, 4], [0, 2], [3]]
    assert torch.equal(data.arrays().x, x) and torch.equal(data.arrays().y, y)
    assert torch.equal(data.test.x, test[0]) and data.test.y.tolist() == [3, 0]
    assert data.num_classes == 4  # the largest label, 3, is in the test set
    assert data.input_shape == (1,) and data.name == "arrays" and data.client_test is None
    assert data.label_counts().tolist() == [[0, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]]
    assert data.partition_table().splitlines() == [
        "client  total |   0   1   2   3",
        "     0      2 |   0   1   1   0",
        "     1      2 |   1   1   0   0",
        "     2      1 |   1   0   0   0",
        "3 clients, 5 examples; client size min/median/max = 1/2/2; mean labels per client = 1.67",
    ]


def test_plot_partition_writes_a_png(tmp_path: Path) -> None:
    data = FederatedData.from_arrays(torch.randn(20, 2), torch.arange(20) % 2, num_clients=3)
    out = data.plot_partition(tmp_path / "plots" / "split.png", title="mine")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_split_is_partition_indices_on_the_training_labels() -> None:
    y = torch.arange(60) % 4
    extras: dict[str, dict[str, object]] = {
        "iid": {}, "dirichlet": {"alpha": 0.3}, "shards": {"shards_per_client": 3},
        "quantity": {"quantity_sigma": 2.0}}
    for partition, extra in extras.items():
        options: dict[str, object] = {"num_clients": 5, "partition": partition, **extra}
        data = FederatedData.from_arrays(torch.zeros(60, 1), y, test=(torch.zeros(2, 1), y[:2]),
                                         seed=7, **options)  # type: ignore[arg-type]
        cfg = DataConfig(name=DatasetName.MNIST, **options)  # type: ignore[arg-type]
        rng = numpy_generator(7, 0, SERVER, Purpose.PARTITION)
        expected = partition_indices(cfg, y.numpy(), rng)
        assert [c.tolist() for c in data.client_train] == [e.tolist() for e in expected]


def test_shards_give_each_client_whole_label_shards() -> None:
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    data = FederatedData.from_arrays(torch.zeros(8, 1), y, test=(torch.zeros(1, 1), y[:1]),
                                     num_clients=2, partition="shards", shards_per_client=2)
    for part in data.client_train:  # 4 shards of one label each, 2 per client
        assert sorted(np.bincount(y[part].numpy(), minlength=4).tolist()) == [0, 0, 2, 2]


def test_test_fraction_holds_out_at_random_and_per_client_with_ids() -> None:
    x = torch.arange(10, dtype=torch.float32)
    data = FederatedData.from_arrays(x, torch.arange(10) % 2, num_clients=2, test_fraction=0.3,
                                     seed=3)
    assert len(data.test) == 3 and len(data.arrays()) == 7
    assert sorted(data.test.x.reshape(-1).tolist() + data.arrays().x.reshape(-1).tolist()) \
        == x.tolist()
    # clients of sizes 3, 1, 5 with fraction 0.4: round(1.2, 0.4, 2.0) = 1, 0, 2 held out
    ids = np.array([0, 2, 2, 1, 0, 2, 2, 0, 2])
    data = FederatedData.from_arrays(torch.arange(9.0), torch.arange(9) % 2, clients=ids,
                                     test_fraction=0.4)
    test_ids = ids[data.test.x.reshape(-1).long().numpy()]
    assert np.bincount(test_ids, minlength=3).tolist() == [1, 0, 2]
    assert [len(c) for c in data.client_train] == [2, 1, 3]
    for k, part in enumerate(data.client_train):
        assert (ids[data.arrays().x[part].reshape(-1).long().numpy()] == k).all()


def test_held_out_exact_counts_and_refusal() -> None:
    rng = np.random.default_rng(0)
    train, test = own.held_out(5, None, 0.01, rng, "w")  # at least one
    assert len(test) == 1 and sorted([*train, *test]) == [0, 1, 2, 3, 4]
    _, test = own.held_out(5, None, 0.99, rng, "w")  # never all
    assert len(test) == 4
    with pytest.raises(DataError, match=r"w: test_fraction = 0.5 of 3 examples holds out none"):
        own.held_out(3, np.array([0, 1, 2]), 0.5, rng, "w")  # every client has one example


def test_dtypes_shapes_and_classes() -> None:
    images = np.zeros((4, 1, 2, 2), dtype=np.uint8)
    data = FederatedData.from_arrays(images, [0, 1, 0, 1], test=(images[:1], [0]),
                                     num_clients=2, num_classes=5, name="pics")
    assert data.train.x.dtype == torch.uint8 and data.input_shape == (1, 2, 2)
    assert data.num_classes == 5 and data.name == "pics" and data.train.y.dtype == torch.int64
    floats = FederatedData.from_arrays(np.ones(6, dtype=np.float64), [0, 1, 2] * 2,
                                       num_clients=2)
    assert floats.train.x.dtype == torch.float32 and floats.input_shape == (1,)
    bools = FederatedData.from_arrays([[True], [False]] * 3, [0, 1] * 3, num_clients=2)
    assert bools.train.x.dtype == torch.float32
    tokens = FederatedData.from_arrays(np.ones((6, 3), dtype=np.int32), [0, 1] * 3,
                                       num_clients=2)
    assert tokens.train.x.dtype == torch.int32  # ids for an embedding stay integers


def test_client_test_fraction_holds_out_local_tests() -> None:
    data = FederatedData.from_arrays(torch.randn(40, 2), torch.arange(40) % 2, num_clients=4,
                                     test_fraction=0.5, client_test_fraction=0.25)
    assert data.client_test is not None and data.client_test_data is not None
    for cid in range(4):
        local = data.local_test(cid)
        assert local is not None and len(local[1]) == round(0.25 * 5)
        assert set(local[1].tolist()).isdisjoint(data.client_train[cid].tolist())


def _error(exc: type[Exception], match: str, *args: object, **kwargs: object) -> None:
    with pytest.raises(exc, match=match):
        FederatedData.from_arrays(*args, **kwargs)  # type: ignore[arg-type]


X, Y = np.zeros((6, 2), dtype=np.float32), np.array([0, 1, 2, 0, 1, 2])


def test_bad_examples_name_what_was_wrong() -> None:
    _error(DataError, r"from_arrays: x has 6 examples but y has 5 labels", X, Y[:5],
           num_clients=2)
    _error(DataError, r"y is torch.float64: labels must be integers", X, Y * 1.0, num_clients=2)
    _error(DataError, r"y\[2\] = -1: labels must be >= 0", X, [0, 1, -1, 0, 1, 2],
           num_clients=2)
    _error(DataError, r"y has shape \(6, 1\): labels must be one per example", X,
           Y.reshape(6, 1), num_clients=2)
    nan = X.copy()
    nan[4, 1] = np.nan
    _error(DataError, r"x\[4\] holds NaN or infinity", nan, Y, num_clients=2)
    _error(DataError, r"x has dtype <U1: examples must be numbers", np.array(["a"] * 6), Y,
           num_clients=2)
    _error(DataError, r"x\[1\] is torch.int64 of shape \(3,\), but x\[0\] was torch.int64 of "
           r"shape \(2,\)", [[1, 2], [1, 2, 3]], [0, 1], num_clients=1)
    _error(DataError, r"x is torch.complex64: complex inputs", torch.zeros(6, 2).to(
        torch.complex64), Y, num_clients=2)
    _error(DataError, r"x has dtype complex64: examples must be numbers",
           X.astype(np.complex64), Y, num_clients=2)
    _error(DataError, r"every label is 0: at least 2 classes", X, np.zeros(6, np.int64),
           num_clients=2)
    _error(DataError, r"y\[2\] = 2 is outside num_classes = 2", X, Y, num_clients=2,
           num_classes=2)
    _error(DataError, r"test y\[0\] = 7 is outside num_classes = 3", X, Y,
           test=(X[:1], [7]), num_clients=2, num_classes=3)
    _error(DataError, r"test inputs are torch.float32 of shape \(3,\) per example, the training "
           r"inputs torch.float32 of shape \(2,\)", X, Y, test=(np.zeros((1, 3)), [0]),
           num_clients=2)
    _error(DataError, r"test x has 1 examples but test y has 2", X, Y,
           test=(X[:1], [0, 1]), num_clients=2)
    _error(DataError, r"clients has shape \(5,\): one client id per example needed, shape "
           r"\(6,\)", X, Y, clients=[0] * 5)
    _error(DataError, r"clients has dtype float64", X, Y, clients=[0.5] * 6)
    _error(DataError, r"iid split: client \d has 1 training examples, fewer than "
           r"min_examples = 2", X, Y, num_clients=4, min_examples=2, test=(X[:1], [0]))
    _error(DataError, r"cannot split 4 examples over num_clients = 5", X[:5], Y[:5],
           num_clients=5)


def test_bad_options_are_reported_together() -> None:
    with pytest.raises(ConfigError) as err:
        FederatedData.from_arrays(X, Y, num_clients=2, alpah=0.1, seed="1")  # type: ignore[call-arg]
    assert err.value.problems == [
        "FederatedData.from_arrays: alpah = 0.1: unknown option; known: num_clients, "
        "partition, alpha, shards_per_client, quantity_sigma, min_examples, test_fraction, "
        "client_test_fraction, num_classes, seed, name",
        "FederatedData.from_arrays: seed = '1': must be of type int",
    ]
    with pytest.raises(ConfigError) as err:
        FederatedData.from_arrays(X, Y, partition="natural", test_fraction=1.0,
                                  client_test_fraction=-0.1, num_classes=1, min_examples=-1)
    assert err.value.problems == [
        "FederatedData.from_arrays: partition = 'natural': 'natural' needs clients= (each "
        "example's client)",
        "FederatedData.from_arrays: num_clients = None: required (or clients= for a natural "
        "partition)",
        "FederatedData.from_arrays: test_fraction = 1.0: must be in (0, 1)",
        "FederatedData.from_arrays: client_test_fraction = -0.1: must be in [0, 1)",
        "FederatedData.from_arrays: num_classes = 1: must be >= 2",
        "FederatedData.from_arrays: min_examples = -1: must be >= 0",
    ]
    _error(ConfigError, r"partition = 'random': must be one of iid, dirichlet", X, Y,
           num_clients=2, partition="random")
    _error(ConfigError, r"partition = 'iid': clients= gives each example's client", X, Y,
           clients=[0, 1] * 3, partition="iid")
    _error(ConfigError, r"num_clients = 3: clients= names 2 distinct clients", X, Y,
           clients=[0, 1] * 3, num_clients=3)
    _error(ConfigError, r"from_arrays: alpha = 0.0: Dirichlet concentration must be > 0", X, Y,
           num_clients=2, partition="dirichlet", alpha=0)
    _error(ConfigError, r"from_arrays: num_clients = 0: must be >= 1", X, Y, num_clients=0)
    _error(ConfigError, r"from_arrays: test_fraction = 0.5: test= gives the test set; pass one "
           "or the other", X, Y, num_clients=2, test=(X[:1], Y[:1]), test_fraction=0.5)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(40, 120), num_clients=st.integers(1, 6), seed=st.integers(0, 2**16),
       partition=st.sampled_from(["iid", "dirichlet", "shards", "quantity", "natural"]),
       fraction=st.floats(0.05, 0.5))
def test_every_example_lands_exactly_once(n: int, num_clients: int, seed: int, partition: str,
                                          fraction: float) -> None:
    x = torch.arange(n, dtype=torch.float32)  # each example's input is its own index
    y = torch.arange(n) % 3
    kwargs: dict[str, object] = {"seed": seed, "test_fraction": fraction}
    if partition == "natural":
        kwargs["clients"] = np.arange(n) % num_clients
    else:
        kwargs.update(num_clients=num_clients, partition=partition, alpha=5.0)
    data = FederatedData.from_arrays(x, y, **kwargs)  # type: ignore[arg-type]
    train = data.arrays()
    held = data.test.x.reshape(-1).long()
    assert sorted([*held.tolist(), *train.x.reshape(-1).long().tolist()]) == list(range(n))
    assert torch.equal(data.test.y, held % 3)
    assert torch.equal(train.y, train.x.reshape(-1).long() % 3)
    assert data.num_clients == num_clients
    owned = torch.cat(list(data.client_train))
    assert sorted(owned.tolist()) == list(range(len(train)))  # disjoint and covering
    assert sum(data.example_counts()) == len(train) == n - len(held)
    again = FederatedData.from_arrays(x, y, **kwargs)  # type: ignore[arg-type]
    assert all(torch.equal(a, b) for a, b in zip(again.client_train, data.client_train))
    assert torch.equal(again.test.x, data.test.x)


def test_a_short_simulation_on_own_arrays() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=gen)
    y = (x @ torch.randn(6, 3, generator=gen)).argmax(dim=1)
    data = FederatedData.from_arrays(x, y, num_clients=6, partition="dirichlet", alpha=1.0)
    model_fn = model_factory(ModelConfig(name="logreg"), data.input_shape, data.num_classes)
    history = Simulation(data=data, model_fn=model_fn, algorithm=FedAvg(), rounds=4,
                         cohort_size=3, client=ClientConfig(lr=0.1, batch_size=10),
                         threads=1).run()
    accuracy = history.series("test_accuracy")
    assert [row["round"] for row in history.rows] == [1, 2, 3, 4]
    assert len(accuracy) == 4 and accuracy[-1] > 0.6  # chance is 1/3
