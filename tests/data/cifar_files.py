"""Small CIFAR-10 binary batches written by the tests, and an archive spec that matches them."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np

from fedloom.data.archive import ArchiveFiles, md5_hex
from fedloom.data.cifar10 import CIFAR10_ARCHIVE, TEST_FILE, TRAIN_FILES


def image(seed: int) -> np.ndarray:
    """A (3, 32, 32) uint8 image: pixel (c, h, w) = (seed + 100 c + 3 h + w) mod 256."""
    c, h, w = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    return ((seed + 100 * c + 3 * h + w) % 256).astype(np.uint8)


def batch_bytes(seeds: list[int], labels: list[int]) -> bytes:
    """Records of 1 label byte and the red, green and blue planes, row by row."""
    return b"".join(bytes([label]) + image(seed).tobytes() for seed, label in zip(seeds, labels))


def tiny_batches(per_file: int = 2) -> dict[str, bytes]:
    """Every batch file: training file i holds images seeded 10 i + j with labels (i + j) % 10."""
    files = {name: batch_bytes([10 * i + j for j in range(per_file)],
                               [(i + j) % 10 for j in range(per_file)])
             for i, name in enumerate(TRAIN_FILES)}
    files[TEST_FILE] = batch_bytes([90, 91, 92], [7, 8, 9])
    return files


def write_batches(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def archive_bytes(files: dict[str, bytes], folder: str = "cifar-10-batches-bin") -> bytes:
    """A .tar.gz like the official one: the batch files in one folder."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def spec_for(files: dict[str, bytes], archive: bytes | None = None, *,
             urls: tuple[str, ...] = ()) -> ArchiveFiles:
    """:data:`CIFAR10_ARCHIVE` with the checksums of ``files`` (and of ``archive``)."""
    archive = archive if archive is not None else archive_bytes(files)
    return dataclasses.replace(
        CIFAR10_ARCHIVE, urls=urls or CIFAR10_ARCHIVE.urls, md5=md5_hex(archive),
        sha256=hashlib.sha256(archive).hexdigest(), size=len(archive),
        members={name: md5_hex(data) for name, data in files.items()})
