"""Finding dataset files: search order, folder and compression variants, checksums, errors."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest

from fedloom.core.errors import DataError
from fedloom.data.checksum import read_verified
from fedloom.data.config import DatasetName
from fedloom.data.locate import (
    FASHION_MNIST_FILES,
    IDX_FILES,
    MNIST_FILES,
    DatasetFiles,
    downloads_disabled,
    locate_files,
    search_roots,
)

Toy = tuple[DatasetFiles, dict[str, bytes]]


def _place(root: Path, raw: dict[str, bytes], *, folder: str | None, gz: bool) -> None:
    target = root / folder if folder else root
    target.mkdir(parents=True, exist_ok=True)
    for name, data in raw.items():
        if gz:
            (target / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (target / name).write_bytes(data)


@pytest.mark.parametrize("folder", ["toy", None])
@pytest.mark.parametrize("gz", [True, False])
def test_finds_every_layout_and_both_forms_verify(
    tmp_path: Path, toy: Toy, folder: str | None, gz: bool
) -> None:
    files, raw = toy
    root = tmp_path / "data"
    _place(root, raw, folder=folder, gz=gz)
    paths = locate_files(files, str(root))
    base = root / folder if folder else root
    for name in raw:
        assert paths[name] == base / (f"{name}.gz" if gz else name)
        assert read_verified(paths[name], files.sha256[name]) == raw[name]


def test_data_dir_comes_before_env(
    tmp_path: Path, toy: Toy, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, raw = toy
    _place(tmp_path / "explicit", raw, folder="toy", gz=True)
    _place(tmp_path / "env", raw, folder="toy", gz=True)
    monkeypatch.setenv("FEDLOOM_DATA", str(tmp_path / "env"))
    paths = locate_files(files, str(tmp_path / "explicit"))
    assert all(p.is_relative_to(tmp_path / "explicit") for p in paths.values())
    paths = locate_files(files, None)
    assert all(p.is_relative_to(tmp_path / "env") for p in paths.values())


def test_cwd_shared_data_is_searched(
    tmp_path: Path, toy: Toy, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, raw = toy
    _place(tmp_path / "shared" / "data", raw, folder=None, gz=False)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    paths = locate_files(files, None)
    assert all(p.parent == (tmp_path / "shared" / "data").resolve() for p in paths.values())


def test_search_roots_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDLOOM_DATA", str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    roots = search_roots(str(tmp_path / "explicit"))
    repo_shared = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
    expected = [tmp_path / "explicit", tmp_path / "env", (tmp_path / ".." / "shared" / "data")]
    assert roots[:3] == [p.resolve() for p in expected]
    assert roots[-1] == repo_shared
    monkeypatch.setenv("FEDLOOM_DATA", str(tmp_path))
    assert search_roots(str(tmp_path))[0] == tmp_path.resolve()
    assert len(set(search_roots(str(tmp_path)))) == len(search_roots(str(tmp_path)))  # no repeats


def test_checksum_mismatch_names_file_and_digests(tmp_path: Path, toy: Toy) -> None:
    files, raw = toy
    _place(tmp_path, raw, folder="toy", gz=True)
    name = "toy-labels-idx1-ubyte"
    path = tmp_path / "toy" / f"{name}.gz"
    path.write_bytes(gzip.compress(raw[name][:-1] + b"\x09"))
    with pytest.raises(DataError, match="checksum mismatch") as info:
        read_verified(locate_files(files, str(tmp_path))[name], files.sha256[name])
    message = str(info.value)
    assert str(path) in message and files.sha256[name] in message
    assert hashlib.sha256(raw[name][:-1] + b"\x09").hexdigest() in message


def test_missing_files_list_every_place_and_how_to_fix(
    tmp_path: Path, toy: Toy, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, raw = toy
    _place(tmp_path / "explicit", {"toy-images-idx3-ubyte": raw["toy-images-idx3-ubyte"]},
           folder="toy", gz=True)
    monkeypatch.setenv("FEDLOOM_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError) as info:
        locate_files(files, str(tmp_path / "explicit"))
    message = str(info.value)
    assert "cannot find toy-labels-idx1-ubyte" in message
    assert "toy-images-idx3-ubyte," not in message.split("Looked in")[0]  # that one was found
    for root in search_roots(str(tmp_path / "explicit")):
        assert f"  {root / 'toy'}\n" in message and f"  {root}\n" in message
    assert "FEDLOOM_OFFLINE=1" in message
    assert "data.dir=" in message and "FEDLOOM_DATA=" in message
    assert "toy-images-idx3-ubyte.gz, toy-labels-idx1-ubyte.gz" in message


def test_no_mirrors_is_a_clear_error(
    tmp_path: Path, toy: Toy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDLOOM_OFFLINE")
    with pytest.raises(DataError, match="no download mirrors configured"):
        locate_files(toy[0], str(tmp_path), mirrors=())


def test_offline_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, disabled in [("1", True), ("yes", True), ("0", False), ("", False),
                            ("false", False)]:
        monkeypatch.setenv("FEDLOOM_OFFLINE", value)
        assert downloads_disabled() is disabled
    monkeypatch.delenv("FEDLOOM_OFFLINE")
    assert not downloads_disabled()


def test_catalog_lists_the_four_files_of_each_idx_dataset() -> None:
    names = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte"}
    for files in (MNIST_FILES, FASHION_MNIST_FILES):
        assert set(files.sha256) == names
        assert all(len(d) == 64 and int(d, 16) >= 0 for d in files.sha256.values())
    assert IDX_FILES[DatasetName.MNIST] is MNIST_FILES
    assert IDX_FILES[DatasetName.FASHION_MNIST] is FASHION_MNIST_FILES
    assert FASHION_MNIST_FILES.folders[0] == "fashion-mnist"
