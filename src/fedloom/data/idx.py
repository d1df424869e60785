"""Read and write IDX files, the format of MNIST and Fashion-MNIST, gzip-compressed or raw.

An IDX file is a 4-byte magic number, ``ndim`` big-endian uint32 dimensions, then the payload
in big-endian order::

    0x00 0x00 <dtype code> <ndim>  dim_0 ... dim_{ndim-1}  payload

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte.gz"
    >>> write_idx(path, np.arange(5, dtype=np.uint8))
    >>> read_idx(path).tolist()
    [0, 1, 2, 3, 4]
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from fedloom.core.errors import DataError

#: IDX dtype code -> numpy dtype (big-endian on disk).
IDX_DTYPES: dict[int, np.dtype[np.generic]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a native-endian, writable array.

    Raises:
        DataError: the file cannot be read, is not valid gzip, or is not a well-formed IDX file;
            the message names the file and what was wrong.
    """
    path = Path(path)
    return parse_idx(read_bytes(path), source=str(path))


def read_bytes(path: str | Path) -> bytes:
    """The file's contents, decompressed if it is gzip (by ``.gz`` suffix or gzip magic).

    Raises:
        DataError: the file cannot be read or its gzip stream is corrupt or truncated.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return gunzip_if_needed(raw, source=str(path), gz=path.suffix == ".gz")


def gunzip_if_needed(raw: bytes, *, source: str, gz: bool = False) -> bytes:
    """``raw`` decompressed if ``gz`` or if it starts with the gzip magic, else ``raw`` itself.

    Raises:
        DataError: the gzip stream is corrupt or truncated; the message names ``source``.
    """
    if not gz and not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as exc:
        raise DataError(f"{source}: truncated gzip stream ({len(raw)} bytes): {exc}") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{source}: bad gzip stream: {exc}") from exc


def parse_idx(buf: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an uncompressed IDX file.

    Args:
        buf: the whole file.
        source: what to call the data in error messages (usually its path).

    Raises:
        DataError: wrong magic, unknown dtype code, truncated header or payload, trailing bytes.
    """
    if len(buf) < 4:
        raise DataError(f"{source}: not an IDX file: only {len(buf)} bytes, header needs 4")
    if buf[0] != 0 or buf[1] != 0:
        raise DataError(
            f"{source}: not an IDX file: magic {buf[:4].hex()} does not start with 0000"
        )
    code, ndim = buf[2], buf[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataError(f"{source}: unknown IDX dtype code 0x{code:02X} (known: {known})")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(
            f"{source}: truncated IDX header: {ndim} dimensions need {header} bytes, "
            f"file has {len(buf)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    count = int(np.prod(dims, dtype=object)) if dims else 1
    expected = count * dtype.itemsize
    actual = len(buf) - header
    if actual < expected:
        raise DataError(
            f"{source}: truncated IDX payload: dims {dims} of {dtype.newbyteorder('=').name} "
            f"need {expected} bytes, found {actual}"
        )
    if actual > expected:
        raise DataError(
            f"{source}: {actual - expected} trailing bytes after the IDX payload "
            f"(dims {dims} need {expected} bytes)"
        )
    flat = np.frombuffer(buf, dtype=dtype, count=count, offset=header)
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file; gzip it if ``compress`` (default: path ends in ``.gz``).

    Raises:
        DataError: the dtype has no IDX code, the array has more than 255 dimensions, or a
            dimension does not fit in uint32.
    """
    path = Path(path)
    dtype = array.dtype.newbyteorder("=")
    if dtype not in _CODES:
        raise DataError(f"{path}: dtype {array.dtype} has no IDX code")
    if array.ndim > 255 or any(d >= 2**32 for d in array.shape):
        raise DataError(f"{path}: shape {array.shape} does not fit the IDX header")
    head = bytes([0, 0, _CODES[dtype], array.ndim])
    dims = np.asarray(array.shape, dtype=">u4").tobytes()
    payload = np.ascontiguousarray(array, dtype=dtype.newbyteorder(">")).tobytes()
    data = head + dims + payload
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
