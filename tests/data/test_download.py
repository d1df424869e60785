"""Downloads from a loopback HTTP mirror: verified, atomic, corrupt copies never kept."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from fedloom.core.errors import DataError
from fedloom.data.download import download_file, write_atomic
from fedloom.data.idx import read_idx
from fedloom.data.locate import MIRRORS, DatasetFiles, locate_files

Toy = tuple[DatasetFiles, dict[str, bytes]]
Served = tuple[Path, str]


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDLOOM_OFFLINE", raising=False)


def _serve(root: Path, raw: dict[str, bytes], sub: str = "") -> None:
    (root / sub).mkdir(parents=True, exist_ok=True)
    for name, data in raw.items():
        (root / sub / f"{name}.gz").write_bytes(gzip.compress(data))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.usefixtures("online")
def test_download_is_verified_and_placed(tmp_path: Path, toy: Toy, http_root: Served) -> None:
    files, raw = toy
    root, url = http_root
    _serve(root, raw, "mirror")
    data_dir = tmp_path / "data"
    # The first mirror has nothing (404); the second one serves the files.
    paths = locate_files(files, str(data_dir), mirrors=[url + "empty/", url + "mirror"])
    for name in raw:
        assert paths[name] == data_dir / "toy" / f"{name}.gz"
        assert gzip.decompress(paths[name].read_bytes()) == raw[name]
    assert read_idx(paths["toy-labels-idx1-ubyte"]).tolist() == [1, 0]
    assert _leftovers(data_dir) == ["toy", *sorted(f"{n}.gz" for n in raw)]  # no temp files
    # A second call finds the downloaded files on disk without any mirror.
    assert locate_files(files, str(data_dir), mirrors=[]) == paths


@pytest.mark.usefixtures("online")
def test_module_mirrors_are_the_default(
    tmp_path: Path, toy: Toy, http_root: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, raw = toy
    root, url = http_root
    _serve(root, raw)
    monkeypatch.setitem(MIRRORS, "toy", (url,))
    paths = locate_files(files, str(tmp_path / "data"))
    assert set(paths) == set(raw)


@pytest.mark.usefixtures("online")
def test_env_dir_is_the_download_target_without_data_dir(
    tmp_path: Path, toy: Toy, http_root: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, raw = toy
    root, url = http_root
    _serve(root, raw)
    monkeypatch.setenv("FEDLOOM_DATA", str(tmp_path / "env"))
    paths = locate_files(files, None, mirrors=[url])
    assert all(p.parent == tmp_path / "env" / "toy" for p in paths.values())


@pytest.mark.usefixtures("online")
def test_home_cache_is_the_last_resort(tmp_path: Path, toy: Toy, http_root: Served) -> None:
    files, raw = toy
    root, url = http_root
    _serve(root, raw)
    paths = locate_files(files, None, mirrors=[url])
    cache = tmp_path / "home" / ".cache" / "fedloom" / "data" / "toy"  # HOME set by conftest
    assert all(p.parent == cache for p in paths.values())


@pytest.mark.usefixtures("online")
@pytest.mark.parametrize("damage", ["wrong", "truncated"])
def test_corrupt_download_is_rejected_and_not_kept(
    tmp_path: Path, toy: Toy, http_root: Served, damage: str
) -> None:
    files, raw = toy
    root, url = http_root
    _serve(root, raw)
    name = "toy-images-idx3-ubyte"
    good = (root / f"{name}.gz").read_bytes()
    bad = gzip.compress(raw[name][:-1] + b"\x00") if damage == "wrong" else good[: len(good) // 2]
    (root / f"{name}.gz").write_bytes(bad)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError) as info:
        locate_files(files, str(data_dir), mirrors=[url])
    message = str(info.value)
    assert f"{url}{name}.gz" in message
    assert ("checksum mismatch" if damage == "wrong" else "truncated gzip") in message
    assert f"{name}.gz" not in _leftovers(data_dir)
    assert not [n for n in _leftovers(data_dir) if n.endswith(".part")]


@pytest.mark.usefixtures("online")
def test_unreachable_mirrors_give_the_full_story(
    tmp_path: Path, toy: Toy, http_root: Served
) -> None:
    files, _ = toy
    _, url = http_root
    with pytest.raises(DataError) as info:
        locate_files(files, str(tmp_path / "data"), mirrors=[url + "nothing/"])
    message = str(info.value)
    assert "404" in message and "Looked in" in message and "data.dir=" in message


def test_offline_blocks_download(tmp_path: Path, toy: Toy, http_root: Served) -> None:
    files, raw = toy
    root, url = http_root
    _serve(root, raw)
    with pytest.raises(DataError, match="download disabled by FEDLOOM_OFFLINE=1"):
        locate_files(files, str(tmp_path / "data"), mirrors=[url])
    assert _leftovers(tmp_path / "data") == []


def test_unwritable_target_falls_through(tmp_path: Path, toy: Toy, http_root: Served) -> None:
    files, raw = toy
    root, url = http_root
    _serve(root, raw)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    name = "toy-labels-idx1-ubyte"
    path = download_file(name, files.sha256[name], [url], [blocker / "toy", tmp_path / "ok"])
    assert path == tmp_path / "ok" / f"{name}.gz"


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: str, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        write_atomic(tmp_path, "f.gz", b"data")
    assert os.listdir(tmp_path) == []


def test_write_atomic_replaces_whole_file(tmp_path: Path) -> None:
    (tmp_path / "f.gz").write_bytes(b"old contents")
    write_atomic(tmp_path, "f.gz", b"new")
    assert (tmp_path / "f.gz").read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f.gz"]
