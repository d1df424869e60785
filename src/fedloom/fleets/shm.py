"""Shared buffers for worker processes: tensors in files under /dev/shm or ``fleet.share_dir``.

A :class:`SharedArena` creates each buffer as a file and maps it (``torch.from_file(...,
shared=True)``); a worker maps the same file from its :class:`SharedRef`, a small picklable
(path, dtype, shape). Space is reserved when a file is created (``posix_fallocate``), so a full
/dev/shm is a clear error at start-up instead of a SIGBUS mid-run. ``close`` unlinks every file
of the arena, including those its workers created under the same prefix; a tensor that is already
mapped stays valid after that, since a mapping outlives the file's name.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import secrets
import tempfile
import weakref
from dataclasses import dataclass

import torch

from fedloom.core.errors import ConfigError

#: tensors smaller than this travel inside the pickled message; larger ones through a file.
INLINE_BYTES = 1 << 16


@dataclass(frozen=True, slots=True)
class SharedRef:
    """A shared tensor by name: what a worker needs to map it."""

    path: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    def open(self) -> torch.Tensor:
        numel = math.prod(self.shape)
        if numel == 0:
            return torch.empty(self.shape, dtype=self.dtype)
        flat = torch.from_file(self.path, shared=True, size=numel, dtype=self.dtype)
        return flat.view(self.shape)


def default_share_dir() -> str:
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def _unlink_prefix(prefix: str, owner: int) -> None:
    if os.getpid() != owner:  # a fork of the owner exiting: not its files to remove
        return
    for path in glob.glob(glob.escape(prefix) + "*"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class SharedArena:
    """Creates shared tensors as files ``<dir>/fedloom-<pid>-<token>-<n>``; unlinks them on close.

    Args:
        share_dir: the directory (``fleet.share_dir``); None for /dev/shm.
        prefix: file-name prefix; a worker extends its parent's, so that the parent's ``close``
            also removes what the worker left behind.
        owner: whether this arena removes its files on close (and at exit).
    """

    def __init__(self, share_dir: str | None = None, *, prefix: str | None = None,
                 owner: bool = True) -> None:
        directory = os.path.dirname(prefix) if prefix else share_dir or default_share_dir()
        if not (os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK)):
            raise ConfigError(f"fleet.share_dir = {share_dir or directory!r}: not a writable "
                              f"directory")
        self.prefix = prefix or os.path.join(
            directory, f"fedloom-{os.getpid()}-{secrets.token_hex(4)}-")
        self._count = 0
        self._close = weakref.finalize(self, _unlink_prefix, self.prefix, os.getpid()) \
            if owner else None

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, SharedRef]:
        """A new shared tensor (contents unspecified) and its reference."""
        self._count += 1
        ref = SharedRef(f"{self.prefix}{self._count}", dtype, tuple(shape))
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes:
            fd = os.open(ref.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.posix_fallocate(fd, 0, nbytes)
            except OSError as err:
                os.unlink(ref.path)
                raise ConfigError(
                    f"fleet.share_dir = {os.path.dirname(ref.path)!r}: cannot reserve "
                    f"{nbytes / 2**20:.1f} MiB of shared memory ({err.strerror}); point "
                    f"fleet.share_dir at a directory with more space") from None
            finally:
                os.close(fd)
        return ref.open(), ref

    def share(self, tensor: torch.Tensor) -> SharedRef:
        """Copy ``tensor`` into a new shared file."""
        out, ref = self.empty(tuple(tensor.shape), tensor.dtype)
        out.copy_(tensor)
        return ref

    def release(self, ref: SharedRef) -> None:
        """Remove one file now (tensors mapped from it stay valid)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ref.path)

    def close(self) -> None:
        if self._close is not None:
            self._close()


class Slab:
    """A rows x width shared matrix that moves to a bigger file when more rows are needed."""

    def __init__(self, arena: SharedArena, width: int, dtype: torch.dtype) -> None:
        self.arena = arena
        self.tensor, self.ref = arena.empty((0, width), dtype)

    def ensure(self, rows: int, *, fresh: bool = False) -> None:
        """At least ``rows`` rows; ``fresh``: in a new file, leaving the old rows untouched."""
        if fresh or rows > self.tensor.shape[0]:
            old = self.ref
            self.tensor, self.ref = self.arena.empty(
                (max(rows, self.tensor.shape[0]), self.tensor.shape[1]), self.tensor.dtype)
            self.arena.release(old)


def share_tree(obj: object, arena: SharedArena) -> object:
    """``obj`` with every large CPU-copyable tensor (in dicts, lists, tuples) put in a file."""
    if isinstance(obj, torch.Tensor) and obj.nbytes >= INLINE_BYTES:
        return arena.share(obj.detach().cpu())
    if isinstance(obj, dict):
        return {k: share_tree(v, arena) for k, v in obj.items()}
    if isinstance(obj, list | tuple) and not hasattr(obj, "_fields"):
        return type(obj)(share_tree(v, arena) for v in obj)
    return obj


def open_tree(obj: object, *, unlink: bool = False) -> object:
    """The inverse of :func:`share_tree`; ``unlink`` removes each file once it is mapped."""
    if isinstance(obj, SharedRef):
        tensor = obj.open()
        if unlink:
            os.unlink(obj.path)
        return tensor
    if isinstance(obj, dict):
        return {k: open_tree(v, unlink=unlink) for k, v in obj.items()}
    if isinstance(obj, list | tuple) and not hasattr(obj, "_fields"):
        return type(obj)(open_tree(v, unlink=unlink) for v in obj)
    return obj


def release_tree(obj: object) -> None:
    """Unlink the files of a :func:`share_tree` result (mapped tensors stay valid)."""
    if isinstance(obj, SharedRef):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(obj.path)
    elif isinstance(obj, dict):
        for v in obj.values():
            release_tree(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            release_tree(v)
