"""Which client process (rank) holds which client: FedLab's ``Coordinator``.

Each client process reports how many clients it holds; clients are numbered across the
processes in rank order, so with ``{1: 3, 2: 2}`` rank 1 holds clients 0-2 and rank 2 holds
clients 3-4. In ``"GLOBAL"`` mode a process is told those numbers; in ``"LOCAL"`` mode it is
told its own index of each (client 4 is rank 2's client 1).

Example:
    >>> Coordinator({1: 3, 2: 2}, mode="LOCAL").map_id_list([4, 0, 3])
    {2: [1, 0], 1: [0]}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum

from fedloom.core.errors import ConfigError


class IdMode(StrEnum):
    LOCAL = "LOCAL"  # ids counted from 0 in each process
    GLOBAL = "GLOBAL"  # ids counted across all processes


def id_mode(mode: str) -> IdMode:
    try:
        return IdMode(str(mode).upper())
    except ValueError:
        raise ConfigError(f"mode = {mode!r}: must be 'LOCAL' or 'GLOBAL'") from None


class Coordinator:
    """Maps client ids to ``(rank, id)`` for a ``{rank: number of clients}`` setup."""

    def __init__(self, setup_dict: Mapping[int, int], mode: str = "LOCAL") -> None:
        self.map = dict(sorted(setup_dict.items()))
        self.mode = id_mode(mode)
        self._first: dict[int, int] = {}
        start = 0
        for rank, count in self.map.items():
            self._first[rank] = start
            start += count

    @property
    def total(self) -> int:
        return sum(self.map.values())

    def first_id(self, rank: int) -> int:
        """The global id of rank ``rank``'s first client."""
        return self._first[rank]

    def map_id(self, id: int) -> tuple[int, int]:
        """``(rank, id)`` of client ``id``; the id local or global as the mode says."""
        for rank, count in self.map.items():
            first = self._first[rank]
            if first <= id < first + count:
                return rank, id - first if self.mode == IdMode.LOCAL else id
        raise ValueError(f"client id {id} is not held by any process: the {len(self.map)} "
                         f"client processes hold clients 0-{self.total - 1}")

    def map_id_list(self, id_list: Iterable[int]) -> dict[int, list[int]]:
        """``{rank: [ids]}`` for the clients of ``id_list`` (ranks in first-seen order)."""
        out: dict[int, list[int]] = {}
        for client in id_list:
            rank, mapped = self.map_id(int(client))
            out.setdefault(rank, []).append(mapped)
        return out

    def __str__(self) -> str:
        return f"Coordinator({self.map}, mode {self.mode.value}, {self.total} clients)"
