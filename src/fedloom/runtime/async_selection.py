"""Which idle clients an asynchronous run hands the newest model to (FLSim's user selectors).

The async loop asks its selector for up to ``count`` of the idle clients whenever clients are
free. Built in, by name (``clock.selector``) or by FLSim's factory:

* ``random`` (:class:`RandomAsyncUserSelector`): uniformly among the idle clients, from the
  generator of ``(seed, tasks handed out)``, so a run is reproducible. FLSim draws uniformly
  among all users; a fedloom client trains one task at a time, so busy ones are skipped.
* ``round_robin`` (:class:`RoundRobinAsyncUserSelector`): clients 0, 1, 2, ... in turn,
  wrapping around, skipping those still training; the position survives a checkpoint.

Any object with FLSim's ``get_random_user() -> AsyncUserSelectorInfo`` works too (drawn until
enough idle clients came up, at most a bounded number of times per hand-out), as does a subclass
of :class:`AsyncUserSelector` that overrides :meth:`AsyncUserSelector.select`.

Example:
    >>> selector = AsyncUserSelectorFactory.create_users_selector(
    ...     AsyncUserSelectorType.ROUND_ROBIN, ClientsProvider(4))
    >>> selector.select([0, 1, 2, 3], 3, torch.Generator()), selector.select([0, 3], 2,
    ...                                                                     torch.Generator())
    ([0, 1, 2], [3, 0])
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import torch

from fedloom.core.counts import LARGE_POPULATION, Excluding
from fedloom.core.errors import ConfigError


class DataProvider(Protocol):
    """FLSim's ``IFLDataProvider``, as far as a selector needs it."""

    def num_users(self) -> int: ...

    def __getitem__(self, user_index: int) -> object: ...


class ClientsProvider:
    """fedloom's registered clients as an FLSim data provider (a user's data is its id)."""

    def __init__(self, num_clients: int) -> None:
        self.num_clients = num_clients

    def num_users(self) -> int:
        return self.num_clients

    def __getitem__(self, user_index: int) -> object:
        return user_index


@dataclass
class AsyncUserSelectorInfo:
    """A selected user: its data (from the provider) and its index (the client id)."""

    user_data: object
    user_index: int


class AsyncUserSelector(abc.ABC):
    """FLSim's selector base: implement :meth:`get_random_user`, or :meth:`select`."""

    def __init__(self, data_provider: DataProvider) -> None:
        self.data_provider = data_provider

    @abc.abstractmethod
    def get_random_user(self) -> AsyncUserSelectorInfo:
        """The next user to train (FLSim's contract)."""

    def select(self, idle: Sequence[int], count: int, generator: torch.Generator) -> list[int]:
        """Up to ``count`` distinct clients of ``idle``, in the order they start."""
        return draw_idle(self.get_random_user, idle, count)

    def position(self) -> int:
        """What a checkpoint keeps of the selector (0: nothing)."""
        return 0

    def restore(self, position: int) -> None:  # noqa: B027 (optional: most keep nothing)
        """Continue from a checkpoint's :meth:`position`."""


class _Free:
    """The idle clients not chosen yet: membership without a set of all of them when ``idle``
    answers it itself (a population's :class:`~fedloom.core.counts.Excluding`)."""

    def __init__(self, idle: Sequence[int]) -> None:
        self.idle: Container[int] = idle if isinstance(idle, Excluding) else set(idle)
        self.left = len(idle)
        self.taken: set[int] = set()

    def take(self, index: int) -> bool:
        """Whether ``index`` was free (it is taken now)."""
        if index in self.taken or index not in self.idle:
            return False
        self.taken.add(index)
        self.left -= 1
        return True


def draw_idle(draw: Callable[[], AsyncUserSelectorInfo], idle: Sequence[int],
              count: int) -> list[int]:
    """Draw users until ``count`` distinct idle ones came up (or a bounded number of draws)."""
    free, chosen = _Free(idle), list[int]()
    for _ in range(4 * len(idle) + 16 * count):
        if len(chosen) == count or not free.left:
            break
        index = int(draw().user_index)
        if free.take(index):
            chosen.append(index)
    return chosen


class RandomAsyncUserSelector(AsyncUserSelector):
    """Uniformly among the idle clients, seeded by ``(seed, tasks handed out)``."""

    def __init__(self, data_provider: DataProvider) -> None:
        super().__init__(data_provider)
        self._generator = torch.Generator().manual_seed(0)

    def get_random_user(self) -> AsyncUserSelectorInfo:
        index = int(torch.randint(self.data_provider.num_users(), (1,),
                                  generator=self._generator))
        return AsyncUserSelectorInfo(self.data_provider[index], index)

    def select(self, idle: Sequence[int], count: int, generator: torch.Generator) -> list[int]:
        """Up to :data:`LARGE_POPULATION` idle clients, the first ``count`` of a seeded
        permutation; above it, ``count`` positions drawn one by one (duplicates drawn again):
        uniform too, in O(count) rather than O(idle clients)."""
        n = len(idle)
        if n <= LARGE_POPULATION:
            order = torch.randperm(n, generator=generator).tolist()
            return [idle[i] for i in order[:count]]
        picked: dict[int, None] = {}
        while len(picked) < min(count, n):
            picked.setdefault(int(torch.randint(0, n, (), generator=generator)))
        return [idle[i] for i in picked]


class RoundRobinAsyncUserSelector(AsyncUserSelector):
    """Users 0, 1, 2, ... in turn from user 0, wrapping around (busy ones skipped)."""

    def __init__(self, data_provider: DataProvider) -> None:
        super().__init__(data_provider)
        self.current_user_index = 0

    def get_random_user(self) -> AsyncUserSelectorInfo:
        index = self.current_user_index
        self.current_user_index = (index + 1) % self.data_provider.num_users()
        return AsyncUserSelectorInfo(self.data_provider[index], index)

    def select(self, idle: Sequence[int], count: int, generator: torch.Generator) -> list[int]:
        free, chosen = _Free(idle), list[int]()
        for _ in range(self.data_provider.num_users()):
            if len(chosen) == count or not free.left:
                break
            index = self.get_random_user().user_index
            if free.take(index):
                chosen.append(index)
        return chosen

    def position(self) -> int:
        return self.current_user_index

    def restore(self, position: int) -> None:
        self.current_user_index = position % max(self.data_provider.num_users(), 1)


class AsyncUserSelectorType(StrEnum):
    RANDOM = "random"
    ROUND_ROBIN = "round_robin"


class AsyncUserSelectorFactory:
    """FLSim's factory of the built-in selectors."""

    @classmethod
    def create_users_selector(cls, type: AsyncUserSelectorType | str,
                              data_provider: DataProvider) -> AsyncUserSelector:
        try:
            kind = AsyncUserSelectorType(getattr(type, "name", type).lower())
        except ValueError:
            raise ConfigError(f"async user selector {type!r}: use one of "
                              f"{', '.join(t.value for t in AsyncUserSelectorType)}") from None
        if kind == AsyncUserSelectorType.ROUND_ROBIN:
            return RoundRobinAsyncUserSelector(data_provider)
        return RandomAsyncUserSelector(data_provider)


class FLSimSelector(Protocol):
    def get_random_user(self) -> AsyncUserSelectorInfo: ...


class _Adapted(AsyncUserSelector):
    """A user object with only FLSim's ``get_random_user``."""

    def __init__(self, inner: FLSimSelector, num_clients: int) -> None:
        super().__init__(ClientsProvider(num_clients))
        self.inner = inner

    def get_random_user(self) -> AsyncUserSelectorInfo:
        return self.inner.get_random_user()


SelectorChoice = str | AsyncUserSelectorType | AsyncUserSelector | FLSimSelector


def make_selector(choice: SelectorChoice, *, num_clients: int) -> AsyncUserSelector:
    """A selector by name, or the user's object (FLSim's contract or ours)."""
    if isinstance(choice, AsyncUserSelector):
        return choice
    if isinstance(choice, str):
        return AsyncUserSelectorFactory.create_users_selector(choice,
                                                              ClientsProvider(num_clients))
    if callable(getattr(choice, "get_random_user", None)):
        return _Adapted(choice, num_clients)
    raise ConfigError(f"async selector {choice!r}: give a name (random, round_robin), an "
                      "AsyncUserSelector, or an object with get_random_user()")


__all__ = [
    "AsyncUserSelector", "AsyncUserSelectorFactory", "AsyncUserSelectorInfo",
    "AsyncUserSelectorType", "ClientsProvider", "RandomAsyncUserSelector",
    "RoundRobinAsyncUserSelector", "SelectorChoice", "make_selector",
]
