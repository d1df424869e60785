"""CIFAR-10 from its binary version (``cifar-10-batches-bin``), checksum-verified.

Each of ``data_batch_1.bin`` ... ``data_batch_5.bin`` (training, 50,000 images) and
``test_batch.bin`` (10,000) is a sequence of 3,073-byte records: one label byte (0-9), then
1,024 red, 1,024 green and 1,024 blue pixel bytes, each plane 32 rows of 32. Images are kept as
uint8 tensors of shape (N, 3, 32, 32) and normalised per batch by :class:`ArrayData` with one
scalar mean and standard deviation: those of the training pixels, computed exactly from their
histogram when loaded (on the real data about 0.4734 and 0.2516, the values implied by the
commonly published per-channel statistics; not measured here, where CIFAR-10 is unavailable).

Files are searched, for each root of :func:`fedloom.data.locate.search_roots` (``data.dir``,
``$FEDLOOM_DATA``, ``../shared/data``), in ``<root>/cifar-10-batches-bin/``,
``<root>/cifar10/cifar-10-batches-bin/``, ``<root>/cifar10/`` and ``<root>/``. Every file is
checked against the MD5 of the official release when it is read. Where the files are missing and
downloads are allowed (``FEDLOOM_OFFLINE`` unset), the official ``cifar-10-binary.tar.gz`` is
fetched from the authors' page, verified (size, published MD5, SHA-256) and its six batch files
kept under ``<first download root>/cifar-10-batches-bin/`` (see :mod:`fedloom.data.archive`).

CIFAR-10 has no natural clients: ``client_train`` is empty and ``load_federated`` splits the
training set by ``data.partition``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from fedloom.core.errors import DataError
from fedloom.data.archive import ArchiveFiles, check_md5, download_archive
from fedloom.data.config import DataConfig
from fedloom.data.dataset import ArrayData, FederatedData
from fedloom.data.idx import read_bytes
from fedloom.data.locate import (
    download_targets,
    downloads_disabled,
    not_found_message,
    offline_reason,
    search_roots,
)
from fedloom.data.pixels import uint8_mean_std

logger = logging.getLogger(__name__)

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"

#: The official archive (https://www.cs.toronto.edu/~kriz/cifar.html publishes its MD5) and the
#: MD5 of each batch file in it.
CIFAR10_ARCHIVE = ArchiveFiles(
    key="cifar10",
    urls=("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
    md5="c32a1d4ab5d03f1284b67883e8d87530",
    sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    size=170_052_171,
    folder="cifar-10-batches-bin",
    members={
        "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
        "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
        "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
        "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
        "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
        TEST_FILE: "803d5f7f4d78ea53de84dbe85f74fb6d",
    },
)


def load_cifar10(cfg: DataConfig, seed: int) -> FederatedData:
    """CIFAR-10's training and test sets, without clients (``data.name = cifar10``).

    Args:
        cfg: the ``data`` section; ``cfg.dir`` is searched first.
        seed: unused (the data is read, not drawn); part of the loader signature.

    Raises:
        DataError: a file is missing and cannot be downloaded (the message says where to put
            it), fails its checksum, is truncated, or holds a label above 9.
    """
    del seed
    paths = locate_cifar10(cfg.dir)
    x_train, y_train = read_batches([paths[name] for name in TRAIN_FILES])
    x_test, y_test = read_batches([paths[TEST_FILE]])
    mean, std = uint8_mean_std(x_train)
    return FederatedData(
        name="cifar10",
        train=ArrayData(x=x_train, y=y_train, mean=mean, std=std),
        test=ArrayData(x=x_test, y=y_test, mean=mean, std=std),
        client_train=(), client_test=None, num_classes=NUM_CLASSES, input_shape=IMAGE_SHAPE,
    )


def read_batches(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (uint8, (N, 3, 32, 32)) and labels (int64) of batch files, concatenated.

    Raises:
        DataError: naming the file that fails its checksum, is not a whole number of records,
            or holds a label above 9.
    """
    images, labels = [], []
    for path in paths:
        records = _records(path)
        bad = np.flatnonzero(records[:, 0] >= NUM_CLASSES)
        if bad.size:
            raise DataError(f"{path}: record {int(bad[0])} has label {int(records[bad[0], 0])}; "
                            f"CIFAR-10 labels are 0-{NUM_CLASSES - 1}")
        images.append(records[:, 1:].reshape(-1, *IMAGE_SHAPE))
        labels.append(records[:, 0].astype(np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _records(path: Path) -> np.ndarray:
    data = read_bytes(path)
    expected = CIFAR10_ARCHIVE.members.get(path.name)
    if expected is not None:
        check_md5(data, expected, source=str(path))
    if len(data) % RECORD_BYTES:
        raise DataError(f"{path}: {len(data)} bytes is not a whole number of {RECORD_BYTES}-byte "
                        f"records (1 label + 3x32x32 pixels): the file is truncated or not a "
                        f"CIFAR-10 binary batch")
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)


def candidate_dirs(data_dir: str | Path | None) -> list[Path]:
    """Every folder the batch files may be in, in search order."""
    folder = CIFAR10_ARCHIVE.folder
    return [d for root in search_roots(data_dir)
            for d in (root / folder, root / "cifar10" / folder, root / "cifar10", root)]


def locate_cifar10(data_dir: str | Path | None) -> dict[str, Path]:
    """The path of every batch file: the first folder holding all six, else a download.

    Raises:
        DataError: not found and not downloadable; lists the folders searched, the download
            tried, and how to provide the files.
    """
    names = list(CIFAR10_ARCHIVE.members)
    dirs = candidate_dirs(data_dir)
    for directory in dirs:
        if all((directory / n).is_file() for n in names):
            return {n: directory / n for n in names}
    if downloads_disabled():
        failure = offline_reason()
    else:
        try:
            return download_archive(CIFAR10_ARCHIVE, download_targets(data_dir))
        except DataError as exc:
            failure = str(exc)
    raise DataError(not_found_message(
        "cifar10", f"{', '.join(names)} together in one folder", dirs, [failure],
        provide=f"download {CIFAR10_ARCHIVE.urls[0]} (md5 {CIFAR10_ARCHIVE.md5}), unpack it "
                f"so that <dir>/{CIFAR10_ARCHIVE.folder}/{names[0]} exists"))
