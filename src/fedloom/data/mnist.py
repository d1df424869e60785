"""MNIST and Fashion-MNIST from their IDX files, verified and cached per process."""

from __future__ import annotations

import numpy as np
import torch

from fedloom.core.errors import DataError
from fedloom.data.checksum import VerifiedCache
from fedloom.data.config import DatasetName
from fedloom.data.dataset import ArrayData
from fedloom.data.idx import parse_idx
from fedloom.data.locate import IDX_FILES, locate_files

#: Per-dataset pixel statistics of the training set, after scaling to [0, 1].
NORMALISATION: dict[DatasetName, tuple[float, float]] = {
    DatasetName.MNIST: (0.1307, 0.3081),
    DatasetName.FASHION_MNIST: (0.2860, 0.3530),
}
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)


def load_idx_dataset(name: DatasetName, data_dir: str | None) -> tuple[ArrayData, ArrayData]:
    """The train and test sets of MNIST or Fashion-MNIST.

    Images are uint8 tensors of shape (N, 1, 28, 28), labels int64; ``mean``/``std`` are set so
    that :meth:`ArrayData.batch` normalises. Decoded arrays are cached per process, keyed on the
    files' resolved paths (and mtimes), so later calls are free. Callers must not modify the
    returned tensors in place: they are shared with the cache.

    Args:
        name: ``mnist`` or ``fashion_mnist``.
        data_dir: extra root searched first (``data.dir``); see :mod:`fedloom.data.locate`.

    Raises:
        DataError: files missing, corrupt, failing their checksum, or inconsistent.
    """
    if name not in IDX_FILES:
        known = ", ".join(IDX_FILES)
        raise DataError(f"{name}: not an IDX dataset (known: {known})")
    files = IDX_FILES[name]
    paths = locate_files(files, data_dir)
    mean, std = NORMALISATION[name]
    splits = []
    for split in ("train", "t10k"):
        images, labels = (f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte")
        x = _IMAGES(paths[images], files.sha256[images])
        y = _LABELS(paths[labels], files.sha256[labels])
        if x.shape[0] != y.shape[0]:
            raise DataError(
                f"{paths[images]} has {x.shape[0]} images but {paths[labels]} has "
                f"{y.shape[0]} labels"
            )
        splits.append(ArrayData(x=x, y=y, mean=mean, std=std))
    return splits[0], splits[1]


def _images(raw: bytes, source: str) -> torch.Tensor:
    images = parse_idx(raw, source=source)
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE[1:]:
        raise DataError(
            f"{source}: expected uint8 images of shape (N, 28, 28), "
            f"got {images.dtype} {images.shape}"
        )
    return torch.from_numpy(images).reshape(-1, *IMAGE_SHAPE)


def _labels(raw: bytes, source: str) -> torch.Tensor:
    labels = parse_idx(raw, source=source)
    if labels.ndim != 1:
        raise DataError(f"{source}: expected a 1-d label array, got shape {labels.shape}")
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DataError(f"{source}: label {int(labels.max())} >= {NUM_CLASSES}")
    return torch.from_numpy(labels.astype(np.int64))


_IMAGES = VerifiedCache(_images, maxsize=8)
_LABELS = VerifiedCache(_labels, maxsize=8)


def clear_cache() -> None:
    """Forget every decoded dataset (tests, or to free memory)."""
    _IMAGES.clear()
    _LABELS.clear()
