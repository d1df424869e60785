"""Fixtures for the data tests: small IDX datasets and a loopback HTTP mirror."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedloom.data.idx import write_idx
from fedloom.data.locate import DatasetFiles
from fedloom.data.mnist import clear_cache


@pytest.fixture(autouse=True)
def _no_network_no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test downloads unless it says so, and none sees the caller's data settings."""
    monkeypatch.setenv("FEDLOOM_OFFLINE", "1")
    monkeypatch.delenv("FEDLOOM_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    yield
    clear_cache()


def idx_bytes(array: np.ndarray, tmp: Path) -> bytes:
    """The uncompressed IDX encoding of ``array``."""
    path = tmp / "encode.tmp"
    write_idx(path, array, compress=False)
    data = path.read_bytes()
    path.unlink()
    return data


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def toy(tmp_path: Path) -> tuple[DatasetFiles, dict[str, bytes]]:
    """A two-file dataset spec ``toy`` and the raw IDX bytes of each file (nothing on disk)."""
    raw = {
        "toy-images-idx3-ubyte": idx_bytes(np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
                                           tmp_path),
        "toy-labels-idx1-ubyte": idx_bytes(np.array([1, 0], dtype=np.uint8), tmp_path),
    }
    files = DatasetFiles(key="toy", folders=("toy",),
                         sha256={name: sha256(data) for name, data in raw.items()})
    return files, raw


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1, and its base URL (ending in ``/``)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
