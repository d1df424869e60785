"""IDX reading and writing: exact bytes, round trips, and every malformed-input error."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedloom.core.errors import DataError
from fedloom.data.idx import parse_idx, read_idx, write_idx

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def _header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def test_hand_made_file_is_decoded_big_endian(tmp_path: Path) -> None:
    path = tmp_path / "x-idx2-short"
    payload = bytes([0x01, 0x00, 0xFF, 0xFF, 0x00, 0x07, 0x80, 0x00])
    path.write_bytes(_header(0x0B, (2, 2)) + payload)
    out = read_idx(path)
    assert out.dtype == np.int16 and out.dtype.isnative
    assert out.tolist() == [[256, -1], [7, -32768]]


def test_writer_emits_the_standard_header(tmp_path: Path) -> None:
    path = tmp_path / "labels-idx1-ubyte"
    write_idx(path, np.array([1, 2, 3], dtype=np.uint8))
    assert path.read_bytes() == b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x03"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["data-idx3.gz", "data-idx3"])
def test_round_trip_gz_and_raw(tmp_path: Path, dtype: type[np.generic], name: str) -> None:
    array = (np.arange(2 * 3 * 5).reshape(2, 3, 5) - 7).astype(dtype)
    path = tmp_path / name
    write_idx(path, array)
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else b"\x00\x00")
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.shape == array.shape
    np.testing.assert_array_equal(out, array)
    out[0, 0, 0] = 1  # the result is writable, not a view of read-only bytes


@settings(max_examples=60, deadline=None)
@given(
    array=hnp.arrays(
        dtype=st.sampled_from(DTYPES),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    ),
    compress=st.booleans(),
)
def test_round_trip_property(array: np.ndarray, compress: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a"
        write_idx(path, array, compress=compress)
        out = read_idx(path)
    np.testing.assert_array_equal(out, array)  # NaNs compare equal here
    assert out.shape == array.shape


def _gz(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "broken-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(data))
    return path


GOOD = _header(0x08, (4,)) + bytes([1, 2, 3, 4])


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (b"\x01\x00" + GOOD[2:], "magic"),
        (b"\x00\x00\x0a\x01" + GOOD[4:], "unknown IDX dtype code 0x0A"),
        (b"\x00\x00", "only 2 bytes"),
        (GOOD[:6], "truncated IDX header"),
        (GOOD[:-1], "truncated IDX payload"),
        (_header(0x0C, (2,)) + bytes(7), "truncated IDX payload"),
        (GOOD + b"\x00\x00", "2 trailing bytes"),
    ],
)
@pytest.mark.parametrize("compressed", [False, True])
def test_malformed_idx_names_file_and_problem(
    tmp_path: Path, content: bytes, phrase: str, compressed: bool
) -> None:
    if compressed:
        path = _gz(tmp_path, content)
    else:
        path = tmp_path / "broken-idx1-ubyte"
        path.write_bytes(content)
    with pytest.raises(DataError, match=phrase) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip(tmp_path: Path) -> None:
    whole = gzip.compress(_header(0x08, (1000,)) + bytes(range(250)) * 4)
    path = tmp_path / "cut-idx1-ubyte.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_not_gzip_despite_suffix(tmp_path: Path) -> None:
    path = tmp_path / "plain-idx1-ubyte.gz"
    path.write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match="bad gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_deflate_stream(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(GOOD * 50))
    data[12:20] = b"\xff" * 8  # inside the deflate payload, after the 10-byte header
    path = tmp_path / "corrupt-idx1-ubyte.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent-idx1-ubyte"
    with pytest.raises(DataError, match="cannot read") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_parse_names_the_source() -> None:
    with pytest.raises(DataError, match=r"^memory: "):
        parse_idx(b"\x00\x00\x08", source="memory")


def test_writer_rejects_dtypes_without_a_code(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no IDX code"):
        write_idx(tmp_path / "a", np.zeros(3, dtype=np.int64))
