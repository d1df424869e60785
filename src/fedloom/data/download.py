"""Checksum-verified downloads of dataset files, written atomically.

A file is fetched from each mirror in turn, decompressed and checked against its SHA-256 in
memory, and only then written: to a temporary file in the target folder, renamed into place.
A corrupt or truncated download is never kept.
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedloom.core.errors import DataError
from fedloom.data.checksum import check_sha256
from fedloom.data.idx import gunzip_if_needed

logger = logging.getLogger(__name__)

#: Seconds a mirror may stay silent (connect or read) before it counts as failed.
DOWNLOAD_TIMEOUT_S = 10.0
_GZIP_MAGIC = b"\x1f\x8b"


def download_file(
    name: str,
    sha256: str,
    mirrors: Sequence[str],
    targets: Sequence[Path],
    *,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Fetch ``<mirror>/<name>.gz``, verify it, and keep it in the first writable target.

    Args:
        name: file name without ``.gz``.
        sha256: expected SHA-256 of the decompressed contents.
        mirrors: base URLs, tried in order.
        targets: folders to write to, tried in order until one accepts the file.
        timeout: socket timeout per request, in seconds.

    Returns:
        The path of the kept file (``<target>/<name>.gz``).

    Raises:
        DataError: no mirror gave a verified copy, or no target could be written; the message
            names every URL and folder tried and why each failed.
    """
    failures: list[str] = []
    for base in mirrors:
        url = f"{base.rstrip('/')}/{name}.gz"
        try:
            data = fetch(url, timeout)
            check_sha256(gunzip_if_needed(data, source=url), sha256, source=url)
        except DataError as exc:
            failures.append(str(exc))
            continue
        filename = f"{name}.gz" if data.startswith(_GZIP_MAGIC) else name
        return keep_verified(filename, {filename: data}, targets)[filename]
    raise DataError(f"{name}: download failed: " + "; ".join(failures or ["no mirrors"]))


def fetch(url: str, timeout: float) -> bytes:
    """The body at ``url``; any failure is a :class:`DataError` naming the URL."""
    logger.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bytes(response.read())
    except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts, malformed URLs
        raise DataError(f"{url}: {exc}") from exc


def keep_verified(what: str, files: Mapping[str, bytes],
                  targets: Sequence[Path]) -> dict[str, Path]:
    """Write verified ``files`` (name -> contents) atomically into the first of ``targets``
    that takes them all; their paths, by name.

    Raises:
        DataError: naming ``what`` and why each folder refused.
    """
    problems: list[str] = []
    for target in targets:
        try:
            return {name: write_atomic(target, name, data) for name, data in files.items()}
        except OSError as exc:
            problems.append(f"{target}: {exc.strerror or exc}")
    raise DataError(f"{what}: downloaded and verified, but no folder is writable: "
                    + "; ".join(problems))


def write_atomic(directory: Path, filename: str, data: bytes) -> Path:
    """Write ``data`` to ``directory/filename`` via a temporary file and a rename.

    Readers never see a partial file, and a failed write leaves nothing behind.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{filename}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        final = directory / filename
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("saved %s", final)
    return final
