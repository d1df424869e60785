"""Per-client state kept between rounds (SCAFFOLD's c_i, FedDyn's h_i, Ditto's personal model).

``MemoryStore`` keeps tensors in a dict (small runs). ``DiskStore`` keeps one sparse
``num_clients x size`` file per key, read and written a client's row at a time, so a million
registered clients cost neither RAM nor disk until they have state.

Both hold writes back while a round's attempt is open (:meth:`~Staged.begin`): the round loop
commits them when it adopts the aggregate and discards them when the attempt fails and the
round is retried, so a failed attempt leaves no client state behind (SCAFFOLD's ``c_i`` would
otherwise no longer sum to the server's ``c``, and could be non-finite).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from fedloom.core.errors import ConfigError

SCAN = 1 << 20  # clients' flags read at once when listing the stored entries


class ClientStateStore(Protocol):
    """Where per-client state lives between rounds (what a checkpoint saves and restores)."""

    def get(self, client_id: int, key: str) -> torch.Tensor | None: ...

    def put(self, client_id: int, key: str, value: torch.Tensor) -> None: ...

    def items(self) -> Iterator[tuple[tuple[str, int], torch.Tensor]]:
        """Every ``((key, client_id), value)`` held, in a fixed order."""
        ...

    def clear(self) -> None:
        """Forget every entry."""
        ...

    def begin(self) -> None:
        """Hold later writes back until :meth:`commit` or :meth:`discard` (reads see them)."""
        ...

    def commit(self) -> None:
        """Write what was held back."""
        ...

    def discard(self) -> None:
        """Forget what was held back."""
        ...


class Staged:
    """Writes held back between :meth:`begin` and :meth:`commit` / :meth:`discard`; written
    through otherwise. Subclasses read and write with ``_read`` and ``_write``, check a write in
    ``_check_put`` (at :meth:`put`, so a bad one fails where it is made), and may keep what is
    held elsewhere than in memory (``_hold``, ``_held``, ``_release``)."""

    #: while an attempt is open, what it wrote: the value, or None where ``_held`` has it
    _pending: dict[tuple[str, int], torch.Tensor | None] | None = None

    def _read(self, client_id: int, key: str) -> torch.Tensor | None:
        raise NotImplementedError

    def _write(self, client_id: int, key: str, value: torch.Tensor) -> None:
        raise NotImplementedError

    def _check_put(self, client_id: int, key: str, value: torch.Tensor) -> None:
        """Raise for a write the store could not take."""

    def _hold(self, client_id: int, key: str, value: torch.Tensor) -> None:
        assert self._pending is not None
        self._pending[(key, client_id)] = value.detach().clone()

    def _held(self, client_id: int, key: str) -> torch.Tensor:
        assert self._pending is not None
        value = self._pending[(key, client_id)]
        assert value is not None
        return value

    def _release(self) -> None:
        """Free what held the attempt's writes (after commit or discard)."""

    def get(self, client_id: int, key: str) -> torch.Tensor | None:
        if self._pending is not None and (key, client_id) in self._pending:
            return self._held(client_id, key)
        return self._read(client_id, key)

    def put(self, client_id: int, key: str, value: torch.Tensor) -> None:
        self._check_put(client_id, key, value)
        if self._pending is None:
            self._write(client_id, key, value)
        else:
            self._hold(client_id, key, value)

    def begin(self) -> None:
        self._pending = {}

    def commit(self) -> None:
        for key, cid in sorted(self._pending or {}):
            self._write(cid, key, self._held(cid, key))
        self.discard()

    def discard(self) -> None:
        self._pending = None
        self._release()


class MemoryStore(Staged):
    """Client state in memory: ``{(key, client_id): tensor}``."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, int], torch.Tensor] = {}

    def _read(self, client_id: int, key: str) -> torch.Tensor | None:
        return self._data.get((key, client_id))

    def _write(self, client_id: int, key: str, value: torch.Tensor) -> None:
        self._data[(key, client_id)] = value.detach().clone()

    def commit(self) -> None:
        """The held copies become the entries (no second copy)."""
        self._data.update((k, v) for k, v in (self._pending or {}).items() if v is not None)
        self.discard()

    def items(self) -> Iterator[tuple[tuple[str, int], torch.Tensor]]:
        for entry in sorted(self._data):
            yield entry, self._data[entry]

    def clear(self) -> None:
        self._data.clear()
        self.discard()


class DiskStore(Staged):
    """Client state in float32 files under ``directory``, one pair per key.

    ``KEY.f32`` holds ``num_clients`` rows of the key's length, ``KEY.has`` one byte per client
    (1: its row holds state). Both are sparse files read and written a row at a time with
    positional I/O, so a client costs its own row's bytes, in memory and on disk, whatever the
    population. (Memory-mapping them instead made every first touch of a row of a large sparse
    file a page fault of several milliseconds: 8x slower rounds at a million clients.)
    """

    def __init__(self, directory: str | Path, num_clients: int) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"state_dir = {str(directory)!r}: cannot create it ({err})") from None
        self.num_clients = num_clients
        self._files: dict[str, tuple[int, int, int]] = {}  # key -> values fd, flags fd, length
        self._staging: dict[str, int] = {}  # key -> fd of its rows written by an open attempt

    def __getstate__(self) -> dict[str, object]:  # another process opens the files itself
        return {"directory": self.directory, "num_clients": self.num_clients, "_files": {},
                "_staging": {}}

    def __setstate__(self, state: dict[str, object]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def __del__(self) -> None:
        for values, flags, _ in getattr(self, "_files", {}).values():
            os.close(values)
            os.close(flags)
        for staged in getattr(self, "_staging", {}).values():
            os.close(staged)

    def _open(self, key: str, length: int | None) -> tuple[int, int, int] | None:
        """The key's files (created for rows of ``length`` if missing and ``length`` given)."""
        if key in self._files:
            return self._files[key]
        values, flags = self.directory / f"{key}.f32", self.directory / f"{key}.has"
        if values.exists():
            length = values.stat().st_size // 4 // self.num_clients
        elif length is None:
            return None
        opened = (os.open(values, os.O_RDWR | os.O_CREAT, 0o644),
                  os.open(flags, os.O_RDWR | os.O_CREAT, 0o644), length)
        os.ftruncate(opened[0], max(os.fstat(opened[0]).st_size, 4 * length * self.num_clients))
        os.ftruncate(opened[1], max(os.fstat(opened[1]).st_size, self.num_clients))
        self._files[key] = opened
        return opened

    def _check(self, client_id: int) -> None:
        if not 0 <= client_id < self.num_clients:
            raise IndexError(f"client {client_id}: the state store holds clients "
                             f"0..{self.num_clients - 1}")

    def _read(self, client_id: int, key: str) -> torch.Tensor | None:
        self._check(client_id)
        files = self._open(key, None)
        if files is None or os.pread(files[1], 1, client_id) != b"\x01":
            return None
        values, _, length = files
        row = bytearray(os.pread(values, 4 * length, 4 * length * client_id))
        return torch.frombuffer(row, dtype=torch.float32)

    def _check_put(self, client_id: int, key: str, value: torch.Tensor) -> None:
        self._check(client_id)
        files = self._open(key, int(value.numel()))
        assert files is not None  # opened, or created for rows of this length
        if value.numel() != files[2]:
            raise ValueError(f"client state {key!r}: {value.numel()} values for client "
                             f"{client_id}, the store's rows hold {files[2]}")

    def _write(self, client_id: int, key: str, value: torch.Tensor) -> None:
        values, flags, length = self._files[key]
        os.pwrite(values, _row(value), 4 * length * client_id)
        os.pwrite(flags, b"\x01", client_id)

    def _hold(self, client_id: int, key: str, value: torch.Tensor) -> None:
        """Into ``KEY.staged.f32`` (sparse, a row per client like ``KEY.f32``): an attempt's
        writes cost disk, not memory, as the store's own rows do."""
        assert self._pending is not None
        length = self._files[key][2]
        if key not in self._staging:
            fd = os.open(self.directory / f"{key}.staged.f32", os.O_RDWR | os.O_CREAT, 0o644)
            os.ftruncate(fd, 4 * length * self.num_clients)
            self._staging[key] = fd
        os.pwrite(self._staging[key], _row(value), 4 * length * client_id)
        self._pending[(key, client_id)] = None

    def _held(self, client_id: int, key: str) -> torch.Tensor:
        length = self._files[key][2]
        row = bytearray(os.pread(self._staging[key], 4 * length, 4 * length * client_id))
        return torch.frombuffer(row, dtype=torch.float32)

    def _release(self) -> None:
        for key, fd in self._staging.items():  # the staging files sparse again
            os.ftruncate(fd, 0)
            os.ftruncate(fd, 4 * self._files[key][2] * self.num_clients)

    def _keys(self) -> list[str]:
        return sorted({p.stem for p in self.directory.glob("*.has")} | set(self._files))

    def items(self) -> Iterator[tuple[tuple[str, int], torch.Tensor]]:
        for key in self._keys():
            files = self._open(key, None)
            if files is None:
                continue
            for start in range(0, self.num_clients, SCAN):  # the flags a block at a time
                block = np.frombuffer(os.pread(files[1], SCAN, start), dtype=np.uint8)
                for cid in (np.flatnonzero(block) + start).tolist():
                    value = self._read(int(cid), key)
                    if value is not None:
                        yield (key, int(cid)), value

    def clear(self) -> None:
        for key in self._keys():
            files = self._open(key, None)
            if files is not None:  # every flag back to 0, the file sparse again
                os.ftruncate(files[1], 0)
                os.ftruncate(files[1], self.num_clients)
        self.discard()


def _row(value: torch.Tensor) -> bytes:
    return value.detach().cpu().reshape(-1).to(torch.float32).numpy().tobytes()


def make_store(state_dir: str | None, num_clients: int) -> ClientStateStore:
    return MemoryStore() if state_dir is None else DiskStore(state_dir, num_clients)
