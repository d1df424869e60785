"""FederatedData.from_torch and from_hf: sources read into tensors (fedloom.data.own_sources)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from fedloom.core.errors import ConfigError, DataError
from fedloom.data import FederatedData


class Items(Dataset[Any]):
    """A map-style dataset returning the given items."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        item = self.items[i]
        if isinstance(item, Exception):
            raise item
        return item


def test_from_torch_reads_every_item_once() -> None:
    x = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    test = Items([(np.array([1.0, 2.0]), np.int64(1)), ([3.0, 4.0], torch.tensor(2))])
    data = FederatedData.from_torch(TensorDataset(x, y), test=test, clients=[1, 1, 0, 0, 2, 2])
    assert torch.equal(data.arrays().x, x) and torch.equal(data.arrays().y, y)
    assert [c.tolist() for c in data.client_train] == [[2, 3], [0, 1], [4, 5]]
    assert data.test.x.tolist() == [[1.0, 2.0], [3.0, 4.0]] and data.test.y.tolist() == [1, 2]
    assert data.name == "torch" and data.num_classes == 3 and data.input_shape == (2,)


def test_from_torch_numbers_images_and_a_held_out_test() -> None:
    scalars = FederatedData.from_torch(Items([(float(i), i % 2) for i in range(10)]),
                                       num_clients=2, test_fraction=0.2, seed=4)
    assert scalars.input_shape == (1,) and len(scalars.test) == 2
    assert scalars.train.x.dtype == torch.float32
    images = Items([(torch.full((1, 3, 3), i, dtype=torch.uint8), i % 3) for i in range(9)])
    data = FederatedData.from_torch(images, num_clients=3, partition="shards",
                                    shards_per_client=1, test_fraction=0.1)
    assert data.train.x.dtype == torch.uint8 and data.input_shape == (1, 3, 3)
    values = sorted([*data.arrays().x[:, 0, 0, 0].tolist(), *data.test.x[:, 0, 0, 0].tolist()])
    assert values == list(range(9))


class Picture:
    """Stands in for a PIL image (only its module is looked at)."""


Picture.__module__ = "PIL.Image"


class Stream(IterableDataset[Any]):
    def __iter__(self) -> Any:
        yield torch.zeros(2), 0


def _torch_error(match: str, dataset: Any, **kwargs: Any) -> None:
    with pytest.raises(DataError, match=match):
        FederatedData.from_torch(dataset, num_clients=1, **kwargs)


def test_from_torch_errors_name_the_item() -> None:
    ok = (torch.zeros(2), 0)
    _torch_error(r"dataset \(Stream\) has no len\(\): from_torch needs a map-style dataset",
                 Stream())
    _torch_error(r"^dataset has no examples$", Items([]))
    _torch_error(r"dataset\[1\] could not be read: KeyError: 'gone'", Items([ok, KeyError("gone")]))
    _torch_error(r"dataset\[1\] is a Tensor: from_torch needs \(input, label\) pairs",
                 Items([ok, torch.zeros(2)]))
    _torch_error(r"dataset\[0\] is a tuple of 3: from_torch needs \(input, label\) pairs",
                 Items([(torch.zeros(2), 0, 1)]))
    _torch_error(r"dataset\[2\]\[0\] is torch.float32 of shape \(3,\), but dataset\[0\]\[0\] "
                 r"was torch.float32 of shape \(2,\)", Items([ok, ok, (torch.zeros(3), 0)]))
    _torch_error(r"dataset\[1\]\[0\] is torch.int64 of shape \(2,\), but dataset\[0\]\[0\] "
                 r"was torch.float32", Items([ok, (torch.zeros(2, dtype=torch.long), 0)]))
    _torch_error(r"dataset\[1\]\[0\] is a builtins.str, not a tensor, array or number$",
                 Items([ok, ("text", 0)]))
    _torch_error(r"dataset\[0\]\[0\] is a PIL.Image.Picture, not a tensor, array or number: "
                 r"give the dataset a transform", Items([(Picture(), 0)]))
    _torch_error(r"dataset\[0\]\[0\] is ragged", Items([([[1, 2], [3]], 0)]))
    _torch_error(r"dataset\[1\]\[1\] = 0.5 \(float\): a label must be an integer class index",
                 Items([ok, (torch.zeros(2), 0.5)]))
    _torch_error(r"dataset\[0\]\[1\] = True \(bool\)", Items([(torch.zeros(2), True)]))
    _torch_error(r"dataset\[0\]\[1\] is torch.float32 of shape \(\): a label must be one "
                 "integer", Items([(torch.zeros(2), torch.tensor(1.0))]))
    _torch_error(r"dataset\[0\]\[1\] is torch.int64 of shape \(2,\)",
                 Items([(torch.zeros(2), torch.tensor([1, 2]))]))
    _torch_error(r"dataset\[1\]\[1\] = -3: labels must be >= 0", Items([ok, (torch.zeros(2), -3)]))
    _torch_error(r"dataset\[0\] holds NaN or infinity",
                 Items([(torch.tensor([float("inf"), 0.0]), 0), ok]))
    _torch_error(r"test\[1\]\[0\] is torch.float32 of shape \(4,\), but test\[0\]\[0\] was",
                 Items([ok, ok]), test=Items([(torch.zeros(5), 0), (torch.zeros(4), 0)]))
    _torch_error(r"from_torch: the test inputs are torch.float32 of shape \(5,\) per example, "
                 r"the training inputs torch.float32 of shape \(2,\)", Items([ok, ok]),
                 test=Items([(torch.zeros(5), 0)]))


datasets = pytest.importorskip("datasets")


def _table() -> Any:
    return datasets.Dataset.from_dict({
        "a": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
        "b": [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12]],
        "label": [0, 1, 2, 0, 1, 2],
        "writer": ["kim", "ali", "kim", "bo", "ali", "bo"],
        "text": ["x"] * 6,
        "ragged": [[1], [1, 2], [1], [1], [1], [1]],
    })


def test_from_hf_columns_class_labels_and_client_column() -> None:
    table = _table().cast_column("label", datasets.ClassLabel(names=["p", "q", "r", "s"]))
    test = datasets.Dataset.from_dict({"a": [9.0], "b": [[0, 0]], "label": [3]}).cast_column(
        "label", datasets.ClassLabel(names=["p", "q", "r", "s"]))
    data = FederatedData.from_hf(table, x=["a", "b"], y="label", test=test, clients="writer")
    assert data.arrays().x.tolist() == [[0.5, 1, 2], [1.0, 3, 4], [1.5, 5, 6], [2.0, 7, 8],
                                        [2.5, 9, 10], [3.0, 11, 12]]
    assert data.arrays().y.tolist() == [0, 1, 2, 0, 1, 2]
    assert [c.tolist() for c in data.client_train] == [[1, 4], [3, 5], [0, 2]]  # ali, bo, kim
    assert data.num_classes == 4 and data.input_shape == (3,) and data.name == "hf"
    assert data.test.x.tolist() == [[9.0, 0.0, 0.0]] and data.test.y.tolist() == [3]


def test_from_hf_reads_the_dataset_once_with_its_client_column(
        monkeypatch: pytest.MonkeyPatch) -> None:
    table, read = _table(), []
    select = datasets.Dataset.select_columns

    def counted(self: datasets.Dataset, columns: list[str]) -> datasets.Dataset:
        read.append(list(columns))
        return select(self, columns)

    monkeypatch.setattr(datasets.Dataset, "select_columns", counted)
    test = datasets.Dataset.from_dict({"a": [9.0], "label": [2]})
    data = FederatedData.from_hf(table, x="a", y="label", test=test, clients="writer")
    assert read == [["a", "label", "writer"], ["a", "label"]]  # each dataset once
    assert [c.tolist() for c in data.client_train] == [[1, 4], [3, 5], [0, 2]]


def test_from_hf_one_column_keeps_its_shape_and_splits_like_arrays() -> None:
    table = _table()
    data = FederatedData.from_hf(table, x="b", y="label", num_clients=2, seed=5)
    same = FederatedData.from_arrays(np.array(table["b"]), table["label"], num_clients=2, seed=5)
    assert data.input_shape == (2,) and data.num_classes == 3
    assert torch.equal(data.arrays().x, same.arrays().x) and torch.equal(data.test.x, same.test.x)
    assert all(torch.equal(a, b) for a, b in zip(data.client_train, same.client_train))


def test_from_hf_errors() -> None:
    table = _table()

    def error(exc: type[Exception], match: str, dataset: Any, **kwargs: Any) -> None:
        with pytest.raises(exc, match=match):
            FederatedData.from_hf(dataset, **{"x": "a", "y": "label", "num_clients": 2,
                                              **kwargs})

    error(DataError, r"dataset has no column 'img', 'y'; its columns: a, b, label, writer",
          table, x="img", y="y")
    error(DataError, r"dataset column 'text' holds text, not numbers: tokenize or encode",
          table, x="text")
    error(DataError, r"dataset column 'writer' holds text", table, y="writer")
    error(DataError, r"dataset column 'ragged'\[1\] is torch.int64 of shape \(2,\), but "
          r"dataset column 'ragged'\[0\] was torch.int64 of shape \(1,\)", table, x="ragged")
    error(DataError, r"dataset is a DatasetDict \(splits train, test\): pass one split",
          datasets.DatasetDict({"train": table, "test": table}))
    error(DataError, r"dataset is a dict, not a datasets.Dataset", {"a": [1.0]})
    error(DataError, r"^dataset has no examples$", table.select([]))
    error(DataError, r"test has no column 'b'", table, x=["a", "b"], test=table.select_columns(
        ["a", "label"]))


def test_from_hf_without_datasets_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    table = _table()
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets raises ImportError
    with pytest.raises(ConfigError, match=r"from_hf needs Hugging Face datasets: pip install "
                       r"'fedloom\[hf\]'"):
        FederatedData.from_hf(table, x="a", y="label", num_clients=2)
