"""MNIST / Fashion-MNIST loading: the real files, and small made-up copies for the edge cases."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from fedloom.core.errors import DataError
from fedloom.data.config import DatasetName
from fedloom.data.idx import write_idx
from fedloom.data.locate import IDX_FILES, MNIST_FILES, DatasetFiles, locate_files
from fedloom.data.mnist import load_idx_dataset

SPLITS = ("train", "t10k")


def test_real_mnist() -> None:
    try:
        locate_files(MNIST_FILES, None)
    except DataError as exc:
        pytest.skip(f"MNIST files not available: {exc}")
    train, test = load_idx_dataset(DatasetName.MNIST, None)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.x.shape == (60000, 1, 28, 28) and train.x.dtype == torch.uint8
    assert test.x.shape == (10000, 1, 28, 28) and test.y.dtype == torch.int64
    assert (train.mean, train.std, test.mean, test.std) == (0.1307, 0.3081, 0.1307, 0.3081)
    histogram = np.bincount(train.x.numpy().ravel(), minlength=256)  # exact pixel statistics
    values = np.arange(256) / 255
    mean = (histogram * values).sum() / histogram.sum()
    std = np.sqrt((histogram * (values - mean) ** 2).sum() / histogram.sum())
    assert (mean, std) == (pytest.approx(0.1307, abs=1e-4), pytest.approx(0.3081, abs=1e-4))
    assert torch.bincount(train.y).tolist()[:3] == [5923, 6742, 5958]  # published class counts
    x, _ = train.batch(torch.arange(0, 60000, 7))
    assert x.mean().item() == pytest.approx(0.0, abs=0.02)
    again, _ = load_idx_dataset(DatasetName.MNIST, None)
    assert again.x is train.x  # served from the per-process cache


def _fake(root: Path, counts: dict[str, tuple[int, int]], seed: int = 0) -> DatasetFiles:
    """Made-up MNIST-layout files under ``root/mnist`` and a spec with their checksums."""
    rng = np.random.default_rng(seed)
    sha = {}
    (root / "mnist").mkdir(parents=True, exist_ok=True)
    for split, (num_images, num_labels) in counts.items():
        arrays = {
            f"{split}-images-idx3-ubyte": rng.integers(0, 256, (num_images, 28, 28), np.uint8),
            f"{split}-labels-idx1-ubyte": (np.arange(num_labels) % 10).astype(np.uint8),
        }
        for name, array in arrays.items():
            write_idx(root / "mnist" / f"{name}.gz", array)
            raw = gzip.decompress((root / "mnist" / f"{name}.gz").read_bytes())
            sha[name] = hashlib.sha256(raw).hexdigest()
    return DatasetFiles(key="mnist", folders=("mnist",), sha256=sha)


def test_fake_mnist_loads_with_shapes_and_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _fake(tmp_path, {"train": (30, 30), "t10k": (12, 12)})
    monkeypatch.setitem(IDX_FILES, DatasetName.MNIST, files)
    train, test = load_idx_dataset(DatasetName.MNIST, str(tmp_path))
    assert train.x.shape == (30, 1, 28, 28) and test.x.shape == (12, 1, 28, 28)
    assert train.y.tolist() == [i % 10 for i in range(30)]
    images = gzip.decompress((tmp_path / "mnist" / "train-images-idx3-ubyte.gz").read_bytes())
    assert train.x.numpy().tobytes() == images[16:]


def test_count_mismatch_names_both_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _fake(tmp_path, {"train": (30, 29), "t10k": (12, 12)})
    monkeypatch.setitem(IDX_FILES, DatasetName.MNIST, files)
    with pytest.raises(DataError, match=r"30 images but .* 29 labels") as info:
        load_idx_dataset(DatasetName.MNIST, str(tmp_path))
    assert "train-images-idx3-ubyte.gz" in str(info.value)
    assert "train-labels-idx1-ubyte.gz" in str(info.value)


def test_real_checksums_reject_made_up_files(tmp_path: Path) -> None:
    _fake(tmp_path, {"train": (3, 3), "t10k": (2, 2)})
    with pytest.raises(DataError, match="checksum mismatch") as info:
        load_idx_dataset(DatasetName.MNIST, str(tmp_path))
    assert str(tmp_path / "mnist") in str(info.value)


def test_replaced_file_is_not_served_from_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(IDX_FILES, DatasetName.MNIST, _fake(tmp_path, {"train": (5, 5),
                                                                         "t10k": (2, 2)}))
    first, _ = load_idx_dataset(DatasetName.MNIST, str(tmp_path))
    monkeypatch.setitem(IDX_FILES, DatasetName.MNIST, _fake(tmp_path, {"train": (7, 7),
                                                                         "t10k": (2, 2)}, seed=1))
    second, _ = load_idx_dataset(DatasetName.MNIST, str(tmp_path))
    assert (len(first), len(second)) == (5, 7)


def test_not_an_idx_dataset() -> None:
    with pytest.raises(DataError, match="not an IDX dataset"):
        load_idx_dataset(DatasetName.SYNTHETIC, None)
