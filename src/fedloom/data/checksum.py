"""SHA-256 checks of dataset files, always over the decompressed contents; a per-process cache
of what verified files parse to (:class:`VerifiedCache`); their text, decoded as UTF-8 with the
line of a bad byte named (:func:`utf8_text`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from fedloom.core.errors import DataError
from fedloom.data.idx import read_bytes

T = TypeVar("T")


def sha256_hex(data: bytes) -> str:
    """The SHA-256 digest of ``data`` as lowercase hex."""
    return hashlib.sha256(data).hexdigest()


def check_sha256(data: bytes, expected: str, *, source: str,
                 what: str = "the decompressed contents") -> None:
    """Raise :class:`DataError` naming ``source`` unless ``data`` (``what`` it is) has digest
    ``expected``."""
    actual = sha256_hex(data)
    if actual != expected.lower():
        raise DataError(
            f"{source}: checksum mismatch: expected sha256 {expected.lower()} of {what}, "
            f"got {actual}"
        )


def read_verified(path: Path, expected_sha256: str) -> bytes:
    """The decompressed bytes of ``path``, checked against ``expected_sha256``.

    Raises:
        DataError: the file is unreadable, a bad gzip stream, or fails the checksum.
    """
    data = read_bytes(path)
    check_sha256(data, expected_sha256, source=str(path))
    return data


class VerifiedCache(Generic[T]):
    """``parse(bytes, source)`` of checksum-verified files, cached per process.

    The key is the file's resolved path, its expected digest, its mtime and its size, so a
    replaced file is read, verified and parsed again. Callers must not modify what it returns
    in place: it is shared with the cache.
    """

    def __init__(self, parse: Callable[[bytes, str], T], *, maxsize: int) -> None:
        self._parse = parse
        self._cached = functools.lru_cache(maxsize=maxsize)(self._load)

    def __call__(self, path: Path, sha256: str) -> T:
        """What ``path`` parses to, once it matches ``sha256`` (DataError otherwise)."""
        resolved = path.resolve()
        stat = resolved.stat()
        return self._cached(str(resolved), sha256, stat.st_mtime_ns, stat.st_size)

    def _load(self, path: str, sha256: str, mtime_ns: int, size: int) -> T:
        del mtime_ns, size  # only the cache's key: a replaced file is a miss
        return self._parse(read_verified(Path(path), sha256), path)

    def clear(self) -> None:
        """Forget every parsed file (tests, or to free memory)."""
        self._cached.cache_clear()


def utf8_text(raw: bytes, *, source: str) -> str:
    """``raw`` decoded as UTF-8; a :class:`DataError` naming ``source`` and the line otherwise."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise DataError(f"{source}, line {line}: not UTF-8 text ({err.reason})") from None
