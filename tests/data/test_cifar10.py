"""CIFAR-10 binary batches: exact parsing, every check, and the verified archive download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedloom.core.errors import ConfigError, DataError
from fedloom.data import cifar10
from fedloom.data.cifar10 import CIFAR10_ARCHIVE, TEST_FILE, load_cifar10, locate_cifar10
from fedloom.data.config import DataConfig, DatasetName, PartitionKind
from fedloom.data.load import load_federated
from fedloom.data.pixels import uint8_mean_std
from tests.data.cifar_files import (
    archive_bytes,
    batch_bytes,
    image,
    spec_for,
    tiny_batches,
    write_batches,
)

Served = tuple[Path, str]


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny batch files in ``<tmp>/data/cifar-10-batches-bin``, with checksums that match."""
    files = tiny_batches()
    write_batches(tmp_path / "data" / "cifar-10-batches-bin", files)
    monkeypatch.setattr(cifar10, "CIFAR10_ARCHIVE", spec_for(files))
    return tmp_path / "data"


def cfg(data_dir: Path, **kw: object) -> DataConfig:
    return DataConfig(name=DatasetName.CIFAR10, dir=str(data_dir), **kw)  # type: ignore[arg-type]


def test_records_parse_into_planes(tiny: Path) -> None:
    data = load_cifar10(cfg(tiny), seed=0)
    train, test = data.arrays(), data.test
    assert data.num_classes == 10 and data.input_shape == (3, 32, 32)
    assert data.client_train == () and data.client_test is None  # no natural clients
    assert train.x.dtype == torch.uint8 and train.x.shape == (10, 3, 32, 32)
    assert train.y.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]  # files in order 1..5
    assert torch.equal(train.x[3], torch.from_numpy(image(11)))  # data_batch_2, 2nd record
    assert int(train.x[0, 1, 2, 5]) == 100 + 6 + 5  # green plane, row 2, column 5
    assert test.y.tolist() == [7, 8, 9] and torch.equal(test.x[2], torch.from_numpy(image(92)))
    assert (train.mean, train.std) == uint8_mean_std(train.x) == (test.mean, test.std)
    x, _ = train.batch(torch.tensor([0]))
    assert torch.allclose(x[0], (torch.from_numpy(image(0)) / 255 - train.mean) / train.std)


def test_split_by_the_partition_and_never_natural(tiny: Path) -> None:
    data = load_federated(cfg(tiny, num_clients=5, partition=PartitionKind.IID), seed=0)
    assert sorted(int(i) for c in data.client_train for i in c) == list(range(10))
    with pytest.raises(ConfigError, match="'natural' exists only for"):
        cfg(tiny, partition=PartitionKind.NATURAL)


def test_truncated_file_and_bad_label_name_the_file(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    files = tiny_batches()
    files["data_batch_3.bin"] = files["data_batch_3.bin"][:-5]
    files[TEST_FILE] = batch_bytes([1, 2], [3, 10])
    write_batches(tmp_path / "cifar-10-batches-bin", files)
    monkeypatch.setattr(cifar10, "CIFAR10_ARCHIVE", spec_for(files))
    with pytest.raises(DataError, match=r"data_batch_3\.bin: 6141 bytes is not a whole number "
                                        r"of 3073-byte records"):
        load_cifar10(cfg(tmp_path), seed=0)
    (tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin").write_bytes(tiny_batches()[
        "data_batch_3.bin"])
    monkeypatch.setattr(cifar10, "CIFAR10_ARCHIVE", spec_for({**files, **{
        "data_batch_3.bin": tiny_batches()["data_batch_3.bin"]}}))
    with pytest.raises(DataError, match=r"test_batch\.bin: record 1 has label 10; CIFAR-10 "
                                        r"labels are 0-9"):
        load_cifar10(cfg(tmp_path), seed=0)


def test_files_are_checked_against_the_official_md5(tmp_path: Path) -> None:
    write_batches(tmp_path / "cifar10", tiny_batches())  # the real table, made-up files
    with pytest.raises(DataError, match=r"cifar10/data_batch_1\.bin: checksum mismatch: "
                                        r"expected md5 5dd7e06a14cb22eb9f671a540d1b7c25"):
        load_cifar10(cfg(tmp_path), seed=0)


def test_missing_files_say_where_to_put_them(tmp_path: Path) -> None:
    files = tiny_batches()
    del files[TEST_FILE]
    write_batches(tmp_path / "cifar-10-batches-bin", files)  # five of six: not a full set
    with pytest.raises(DataError) as err:
        load_cifar10(cfg(tmp_path), seed=0)
    message = str(err.value)
    assert "cannot find data_batch_1.bin" in message and str(tmp_path) in message
    assert "disabled by FEDLOOM_OFFLINE=1" in message
    assert "cifar-10-binary.tar.gz (md5 c32a1d4ab5d03f1284b67883e8d87530)" in message
    assert "<dir>/cifar-10-batches-bin/data_batch_1.bin" in message and "data.dir" in message


@pytest.mark.parametrize("folder", ["cifar-10-batches-bin", "cifar10/cifar-10-batches-bin",
                                    "cifar10", "."])
def test_every_documented_folder_is_searched(tmp_path: Path, folder: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    files = tiny_batches(per_file=1)
    write_batches(tmp_path / folder, files)
    monkeypatch.setattr(cifar10, "CIFAR10_ARCHIVE", spec_for(files))
    monkeypatch.setenv("FEDLOOM_DATA", str(tmp_path))
    assert locate_cifar10(None)[TEST_FILE] == (tmp_path / folder / TEST_FILE).resolve()


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDLOOM_OFFLINE", raising=False)


@pytest.mark.usefixtures("online")
def test_download_verifies_the_archive_and_keeps_only_the_batches(
        tmp_path: Path, http_root: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    root, url = http_root
    files = tiny_batches()
    archive = archive_bytes({**files, "batches.meta.txt": b"airplane\n",
                             "../../escape.bin": b"never written"})
    (root / "cifar.tar.gz").write_bytes(archive)
    (root / "bad.tar.gz").write_bytes(archive[:-10])  # truncated: fails size and checksum
    spec = spec_for(files, archive, urls=(url + "missing.tar.gz", url + "bad.tar.gz",
                                          url + "cifar.tar.gz"))
    monkeypatch.setattr(cifar10, "CIFAR10_ARCHIVE", spec)
    data = load_cifar10(cfg(tmp_path / "data"), seed=0)
    assert data.arrays().y.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    kept = tmp_path / "data" / "cifar-10-batches-bin"
    assert sorted(p.name for p in kept.iterdir()) == sorted(files)  # no temporary files
    assert not list(tmp_path.rglob("escape.bin"))
    assert {n: (kept / n).read_bytes() for n in files} == files


@pytest.mark.usefixtures("online")
def test_a_bad_archive_keeps_nothing_and_says_why(tmp_path: Path, http_root: Served,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root, url = http_root
    files = tiny_batches()
    archive = archive_bytes(files)
    (root / "cifar.tar.gz").write_bytes(archive)
    wrong_md5 = spec_for(files, archive_bytes({**files, TEST_FILE: b"x" * 3073}),
                         urls=(url + "cifar.tar.gz",))
    monkeypatch.setattr(cifar10, "CIFAR10_ARCHIVE", wrong_md5)
    with pytest.raises(DataError, match=r"(?s)cifar\.tar\.gz: \d+ bytes, expected \d+|"
                                        r"checksum mismatch"):
        load_cifar10(cfg(tmp_path / "data"), seed=0)
    assert not (tmp_path / "data").exists()
    lacking = {n: d for n, d in files.items() if n != TEST_FILE}
    (root / "lacking.tar.gz").write_bytes(archive_bytes(lacking))
    spec = spec_for(files, archive_bytes(lacking), urls=(url + "lacking.tar.gz",))
    monkeypatch.setattr(cifar10, "CIFAR10_ARCHIVE", spec)
    with pytest.raises(DataError, match=r"the archive has no cifar-10-batches-bin/test_batch"):
        load_cifar10(cfg(tmp_path / "data"), seed=0)
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_real_cifar10() -> None:
    try:
        locate_cifar10(None)
    except DataError as exc:
        pytest.skip(f"CIFAR-10 files not available: {exc}")
    data = load_cifar10(DataConfig(name=DatasetName.CIFAR10), seed=0)
    train = data.arrays()
    assert (len(train), len(data.test)) == (50000, 10000)
    assert np.bincount(train.y.numpy()).tolist() == [5000] * 10
    # the scalar statistics implied by the published per-channel ones (not measured here)
    assert (train.mean, train.std) == (pytest.approx(0.4734, abs=1e-3),
                                       pytest.approx(0.2516, abs=1e-3))
    assert len(CIFAR10_ARCHIVE.members) == 6
