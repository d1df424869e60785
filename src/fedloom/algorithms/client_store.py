"""Per-client state kept between rounds (SCAFFOLD's c_i, FedDyn's h_i, Ditto's personal model).

``MemoryStore`` keeps tensors in a dict (small runs). ``DiskStore`` keeps one memory-mapped
``num_clients x size`` file per key, written only for clients that have state, so a million
registered clients cost (sparse) disk, not RAM.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from fedloom.core.errors import ConfigError


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


class MemoryStore:
    """Client state in memory: ``{(key, client_id): tensor}``."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, int], torch.Tensor] = {}

    def get(self, client_id: int, key: str) -> torch.Tensor | None:
        return self._data.get((key, client_id))

    def put(self, client_id: int, key: str, value: torch.Tensor) -> None:
        self._data[(key, client_id)] = value.detach().clone()

    def items(self) -> Iterator[tuple[tuple[str, int], torch.Tensor]]:
        for entry in sorted(self._data):
            yield entry, self._data[entry]

    def clear(self) -> None:
        self._data.clear()


class DiskStore:
    """Client state in memory-mapped float32 files under ``directory`` (one per key)."""

    def __init__(self, directory: str | Path, num_clients: int) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"state_dir = {str(directory)!r}: cannot create it ({err})") from None
        self.num_clients = num_clients
        self._values: dict[str, np.memmap[Any, Any]] = {}
        self._present: dict[str, np.memmap[Any, Any]] = {}

    def _open(self, key: str, size: int) -> None:
        shape = (self.num_clients, size)
        path = self.directory / f"{key}.f32"
        mode: Literal["r+", "w+"] = "r+" if path.exists() else "w+"
        self._values[key] = np.memmap(path, dtype=np.float32, mode=mode, shape=shape)
        self._present[key] = np.memmap(self.directory / f"{key}.has", dtype=np.uint8, mode=mode,
                                       shape=(self.num_clients,))

    def get(self, client_id: int, key: str) -> torch.Tensor | None:
        if key not in self._values:
            if not (self.directory / f"{key}.f32").exists():
                return None
            size = (self.directory / f"{key}.f32").stat().st_size // 4 // self.num_clients
            self._open(key, size)
        if not self._present[key][client_id]:
            return None
        return torch.from_numpy(np.array(self._values[key][client_id]))

    def put(self, client_id: int, key: str, value: torch.Tensor) -> None:
        if key not in self._values:
            self._open(key, int(value.numel()))
        self._values[key][client_id] = value.detach().cpu().reshape(-1).float().numpy()
        self._present[key][client_id] = 1

    def _keys(self) -> list[str]:
        return sorted({p.stem for p in self.directory.glob("*.has")} | set(self._present))

    def items(self) -> Iterator[tuple[tuple[str, int], torch.Tensor]]:
        for key in self._keys():
            present = (self._present[key] if key in self._present
                       else np.fromfile(self.directory / f"{key}.has", dtype=np.uint8))
            for cid in np.flatnonzero(present).tolist():
                value = self.get(int(cid), key)
                if value is not None:
                    yield (key, int(cid)), value

    def clear(self) -> None:
        for key in self._keys():
            present = self._present.get(key)
            if present is None:
                present = np.memmap(self.directory / f"{key}.has", dtype=np.uint8, mode="r+")
            present[:] = 0
            present.flush()


def make_store(state_dir: str | None, num_clients: int) -> ClientStateStore:
    return MemoryStore() if state_dir is None else DiskStore(state_dir, num_clients)
