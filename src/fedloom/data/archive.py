"""Checksum-verified download of a dataset published as one ``.tar.gz`` archive.

The archive is fetched from each URL in turn and checked in memory (its size, MD5 and, where
known, SHA-256) before anything is opened. Then only the named members are read out of it, each
checked against its own MD5, and written under fixed names (never a path taken from the archive)
atomically into the target folder. A corrupt, truncated or tampered archive leaves nothing on
disk.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedloom.core.errors import DataError
from fedloom.data.checksum import check_sha256
from fedloom.data.download import DOWNLOAD_TIMEOUT_S, fetch, keep_verified

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchiveFiles:
    """A dataset's files as its publisher ships them: inside one ``.tar.gz``.

    Attributes:
        key: short name for messages.
        urls: where the archive is published, tried in order.
        md5: the archive's published MD5.
        sha256: the archive's SHA-256, or None where none is known.
        size: the archive's size in bytes, or None.
        folder: the folder inside the archive that holds the files (and their folder on disk).
        members: file name -> MD5 of its bytes.
    """

    key: str
    urls: tuple[str, ...]
    md5: str
    sha256: str | None
    size: int | None
    folder: str
    members: dict[str, str]

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError(f"ArchiveFiles {self.key!r}: members must list at least one file")


def md5_hex(data: bytes) -> str:
    """The MD5 digest of ``data`` as lowercase hex (an integrity check, not security)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def check_md5(data: bytes, expected: str, *, source: str) -> None:
    """Raise :class:`DataError` naming ``source`` unless ``data`` has MD5 ``expected``."""
    actual = md5_hex(data)
    if actual != expected.lower():
        raise DataError(f"{source}: checksum mismatch: expected md5 {expected.lower()}, "
                        f"got {actual} ({len(data)} bytes)")


def download_archive(files: ArchiveFiles, targets: Sequence[Path], *,
                     urls: Sequence[str] | None = None,
                     timeout: float = DOWNLOAD_TIMEOUT_S) -> dict[str, Path]:
    """Fetch and verify the archive, then keep its members in ``<target>/<files.folder>/``.

    Args:
        files: the archive and its members.
        targets: roots to write to, tried in order until one accepts every member.
        urls: override of ``files.urls``.
        timeout: socket timeout per request, in seconds.

    Returns:
        The path of every member, by file name.

    Raises:
        DataError: no URL gave a verified archive (each URL and why it failed are named), or
            no target could be written.
    """
    failures: list[str] = []
    for url in files.urls if urls is None else urls:
        try:
            members = _members(files, url, fetch(url, timeout))
        except DataError as exc:
            failures.append(str(exc))
            continue
        return keep_verified(files.key, members, [t / files.folder for t in targets])
    raise DataError(f"{files.key}: download failed: " + "; ".join(failures or ["no URLs"]))


def _members(files: ArchiveFiles, url: str, data: bytes) -> dict[str, bytes]:
    """The verified member files of an archive checked against ``files``."""
    if files.size is not None and len(data) != files.size:
        raise DataError(f"{url}: {len(data)} bytes, expected {files.size}")
    check_md5(data, files.md5, source=url)
    if files.sha256 is not None:
        check_sha256(data, files.sha256, source=url, what="the archive")
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for name, md5 in files.members.items():
                path = f"{files.folder}/{name}"
                try:
                    member = tar.getmember(path)
                except KeyError:
                    raise DataError(f"{url}: the archive has no {path}") from None
                handle = tar.extractfile(member) if member.isfile() else None
                if handle is None:
                    raise DataError(f"{url}: {path} in the archive is not a regular file")
                content = handle.read()
                check_md5(content, md5, source=f"{url}:{path}")
                out[name] = content
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{url}: not a readable .tar.gz archive: {exc}") from exc
    return out
