"""SHA-256 checks of dataset files, always over the decompressed contents."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fedloom.core.errors import DataError
from fedloom.data.idx import read_bytes


def sha256_hex(data: bytes) -> str:
    """The SHA-256 digest of ``data`` as lowercase hex."""
    return hashlib.sha256(data).hexdigest()


def check_sha256(data: bytes, expected: str, *, source: str) -> None:
    """Raise :class:`DataError` naming ``source`` unless ``data`` has digest ``expected``."""
    actual = sha256_hex(data)
    if actual != expected.lower():
        raise DataError(
            f"{source}: checksum mismatch: expected sha256 {expected.lower()} of the "
            f"decompressed contents, got {actual}"
        )


def read_verified(path: Path, expected_sha256: str) -> bytes:
    """The decompressed bytes of ``path``, checked against ``expected_sha256``.

    Raises:
        DataError: the file is unreadable, a bad gzip stream, or fails the checksum.
    """
    data = read_bytes(path)
    check_sha256(data, expected_sha256, source=str(path))
    return data
