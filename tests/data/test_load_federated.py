"""load_federated: each dataset and partition kind, determinism, and the min_examples guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedloom.core.errors import DataError
from fedloom.data.checksum import sha256_hex
from fedloom.data.config import DataConfig, DatasetName, PartitionKind
from fedloom.data.dataset import FederatedData
from fedloom.data.idx import read_bytes, write_idx
from fedloom.data.load import load_federated
from fedloom.data.locate import IDX_FILES, DatasetFiles


@pytest.fixture
def fake_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A 200/50-example MNIST look-alike under tmp_path/mnist, registered with its checksums."""
    rng = np.random.default_rng(0)
    sha = {}
    for split, n in (("train", 200), ("t10k", 50)):
        for kind, array in (
            ("images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), np.uint8)),
            ("labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8)),
        ):
            path = tmp_path / "mnist" / f"{split}-{kind}.gz"
            path.parent.mkdir(exist_ok=True)
            write_idx(path, array)
            sha[f"{split}-{kind}"] = sha256_hex(read_bytes(path))
    files = DatasetFiles(key="mnist", folders=("mnist",), sha256=sha)
    monkeypatch.setitem(IDX_FILES, DatasetName.MNIST, files)
    return str(tmp_path)


def _covers(data: FederatedData) -> None:
    joined = torch.cat(data.client_train)
    assert joined.dtype == torch.int64
    assert torch.equal(joined.sort().values, torch.arange(len(data.train)))


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards", "quantity"])
def test_image_partitions(fake_mnist: str, kind: str) -> None:
    cfg = DataConfig(name=DatasetName.MNIST, dir=fake_mnist, num_clients=10,
                     partition=PartitionKind(kind))
    data = load_federated(cfg, seed=0)
    assert data.num_clients == 10 and data.client_test is None
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert (len(data.train), len(data.test)) == (200, 50)
    assert data.train.mean == 0.1307
    _covers(data)
    again = load_federated(cfg, seed=0)
    other = load_federated(cfg, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(data.client_train, again.client_train))
    assert not all(torch.equal(a, b) for a, b in zip(data.client_train, other.client_train))


def test_shards_use_the_config(fake_mnist: str) -> None:
    cfg = DataConfig(name=DatasetName.MNIST, dir=fake_mnist, num_clients=20,
                     partition=PartitionKind.SHARDS, shards_per_client=2)
    data = load_federated(cfg, seed=0)
    assert {data.num_examples(k) for k in range(20)} == {10}
    labels = data.train.y
    assert max(len(torch.unique(labels[c])) for c in data.client_train) <= 4


def test_min_examples_is_enforced(fake_mnist: str) -> None:
    cfg = DataConfig(name=DatasetName.MNIST, dir=fake_mnist, num_clients=100, min_examples=3)
    with pytest.raises(DataError, match="min_examples = 3"):
        load_federated(cfg, seed=0)


@pytest.mark.parametrize("name", ["synthetic", "synthetic_iid", "leaf_synthetic"])
def test_synthetic_natural_keeps_users(name: str) -> None:
    cfg = DataConfig(name=DatasetName(name), num_clients=6, num_features=12, num_classes=4)
    data = load_federated(cfg, seed=3)
    assert cfg.partition == PartitionKind.NATURAL
    assert data.num_clients == 6 and data.client_test is not None
    assert data.input_shape == (12,) and data.num_classes == 4
    assert data.name == name
    _covers(data)


def test_synthetic_uses_alpha_beta_and_seed() -> None:
    cfg = DataConfig(name=DatasetName.SYNTHETIC, num_clients=5, alpha=0.5, beta=0.5)
    a, b = load_federated(cfg, seed=0), load_federated(cfg, seed=0)
    assert torch.equal(a.train.x, b.train.x)
    assert not torch.equal(a.train.x[:10], load_federated(cfg, seed=1).train.x[:10])


def test_synthetic_repartitioned_pools_train_examples() -> None:
    cfg = DataConfig(name=DatasetName.SYNTHETIC, num_clients=8, partition=PartitionKind.DIRICHLET,
                     alpha=0.5)
    data = load_federated(cfg, seed=0)
    assert data.client_test is None and data.num_clients == 8
    _covers(data)
    natural = load_federated(DataConfig(name=DatasetName.SYNTHETIC, num_clients=8, alpha=0.5),
                             seed=0)
    assert torch.equal(data.train.x, natural.train.x)  # same examples, new split
