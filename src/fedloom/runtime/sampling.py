"""Cohort sampling: which clients take part in a round, seeded by (seed, round).

Samplers are pluggable: anything with a ``size`` and ``sample(round, size=None) -> list[int]``
(sorted client ids) can be passed to :class:`fedloom.Simulation`; the registered ones are chosen
with ``cohort.sampler``. ``size`` overrides the cohort size for one draw: an algorithm's
selection may ask for more candidates than the cohort it picks from them (power-of-choice).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from enum import StrEnum
from typing import Protocol

import torch

from fedloom.core.counts import LARGE_POPULATION, Repeated
from fedloom.core.errors import ConfigError
from fedloom.core.permutation import KeyedPermutation
from fedloom.core.rng import SERVER, Purpose, choose, derive_seed, torch_generator


class SamplerName(StrEnum):
    UNIFORM = "uniform"  # uniformly without replacement, independently each round
    WEIGHTED = "weighted"  # without replacement, probability proportional to example counts
    ROUND_ROBIN = "round_robin"  # a seeded order of all clients, taken size at a time


class Sampler(Protocol):
    """Chooses a round's cohort; returns client ids sorted ascending.

    Attributes:
        size: the cohort size (``cohort.size``).
    """

    size: int

    def sample(self, round: int, size: int | None = None) -> list[int]:
        """``size`` (default :attr:`size`) clients for ``round``, seeded by (seed, round)."""
        ...



def _check_size(size: int, num_clients: int) -> None:
    if not 1 <= size <= num_clients:
        raise ConfigError(f"cohort.size = {size}: must be in [1, {num_clients}] "
                          f"(data.num_clients = {num_clients})")


class UniformSampler:
    """``size`` clients drawn uniformly without replacement, independently each round.

    Up to :data:`LARGE_POPULATION` clients the draw is a seeded permutation; above it, Floyd's
    algorithm (:func:`fedloom.core.rng.choose`), so that a round costs the same with a million
    registered clients as with a thousand.

    Example:
        >>> UniformSampler(num_clients=10, size=3, seed=0).sample(1) == \\
        ...     UniformSampler(num_clients=10, size=3, seed=0).sample(1)
        True
    """

    def __init__(self, *, num_clients: int, size: int, seed: int) -> None:
        _check_size(size, num_clients)
        self.num_clients = num_clients
        self.size = size
        self.seed = seed

    def sample(self, round: int, size: int | None = None) -> list[int]:
        k = min(self.size if size is None else size, self.num_clients)
        gen = torch_generator(self.seed, round, SERVER, Purpose.COHORT)
        if self.num_clients > LARGE_POPULATION:  # O(size), not O(num_clients), per round
            return choose(self.num_clients, k, gen)
        chosen = torch.randperm(self.num_clients, generator=gen)[:k]
        return sorted(chosen.tolist())


class WeightedSampler:
    """``size`` clients without replacement, each draw proportional to its example count.

    Above :data:`LARGE_POPULATION` clients with equal counts (:class:`Repeated`: a population
    generated on demand) equal weights make the draw uniform without replacement, so it is
    drawn as such, by Floyd's algorithm: nothing per client is held. Otherwise one float64
    weight per client, as before.
    """

    def __init__(self, *, num_examples: Sequence[int], size: int, seed: int) -> None:
        _check_size(size, len(num_examples))
        self.num_clients = len(num_examples)
        self.weights: torch.Tensor | None = None
        if isinstance(num_examples, Repeated) and self.num_clients > LARGE_POPULATION:
            self.usable = self.num_clients if num_examples.value > 0 else 0
        else:
            self.weights = torch.tensor(num_examples, dtype=torch.float64)
            self.usable = int((self.weights > 0).sum())
        if self.usable < size:
            raise ConfigError(f"cohort.size = {size}: only {self.usable} "
                              "clients have examples to weight by")
        self.size = size
        self.seed = seed

    def sample(self, round: int, size: int | None = None) -> list[int]:
        k = min(self.size if size is None else size, self.usable)
        gen = torch_generator(self.seed, round, SERVER, Purpose.COHORT)
        if self.weights is None:  # equal weights: uniform, O(size) per round
            return choose(self.num_clients, k, gen)
        return sorted(torch.multinomial(self.weights, k, replacement=False,
                                        generator=gen).tolist())


class RoundRobinSampler:
    """Every client in turn: a seeded permutation of all clients, ``size`` per round.

    Up to :data:`LARGE_POPULATION` clients the order is a seeded ``torch.randperm``; above it,
    a :class:`~fedloom.core.permutation.KeyedPermutation` read one position at a time, so the
    order costs no memory per registered client (another order than randperm's, equally
    visiting every client once per pass).
    """

    def __init__(self, *, num_clients: int, size: int, seed: int) -> None:
        _check_size(size, num_clients)
        self.order: KeyedPermutation | list[int]
        if num_clients > LARGE_POPULATION:
            self.order = KeyedPermutation(num_clients, derive_seed(seed, 0, SERVER,
                                                                   Purpose.COHORT))
        else:
            gen = torch_generator(seed, 0, SERVER, Purpose.COHORT)
            self.order = torch.randperm(num_clients, generator=gen).tolist()
        self.size = size

    def sample(self, round: int, size: int | None = None) -> list[int]:
        n = len(self.order)
        start = (round - 1) * self.size
        return sorted({self.order[(start + i) % n]
                       for i in range(min(self.size if size is None else size, n))})


class ConnectedSampler:
    """A deployment's cohort: ``base``'s, with clients that are not connected replaced.

    When every client ``base`` draws is connected the cohort is exactly ``base``'s (so a
    deployment with all clients up samples as the simulation does); each absent one is replaced
    by a connected client outside the cohort, drawn uniformly with the round's generator, after
    waiting up to ``grace`` seconds for it to (re)connect; when
    too few are connected, the cohort is smaller. A round then never waits for a client that is
    not there.

    Example:
        >>> s = ConnectedSampler(UniformSampler(num_clients=10, size=3, seed=0),
        ...                      available=lambda: range(10), seed=0)
        >>> s.sample(1) == UniformSampler(num_clients=10, size=3, seed=0).sample(1)
        True
    """

    def __init__(self, base: Sampler, *, available: Callable[[], Collection[int]],
                 seed: int, grace: float = 0.0) -> None:
        self.base = base
        self.size = base.size
        self.available = available
        self.seed = seed
        self.grace = grace

    def sample(self, round: int, size: int | None = None) -> list[int]:
        cohort = self.base.sample(round, size)
        up = self._wait_for(cohort)
        present = [c for c in cohort if c in up]
        missing = len(cohort) - len(present)
        if not missing:
            return cohort
        spare = sorted(up - set(cohort))
        gen = torch_generator(self.seed, round, SERVER, Purpose.SUBSTITUTE)
        picks = torch.randperm(len(spare), generator=gen)[:missing].tolist()
        return sorted(present + [spare[i] for i in picks])

    def _wait_for(self, cohort: Collection[int]) -> set[int]:
        """The connected clients, once every one of ``cohort`` is or ``grace`` seconds passed
        (a client reconnecting right then keeps its place, so the cohort stays the seed's)."""
        deadline = time.monotonic() + self.grace
        while not set(cohort) <= (up := set(self.available())) and time.monotonic() < deadline:
            time.sleep(0.05)
        return up


def make_sampler(name: SamplerName, *, num_examples: Sequence[int], size: int,
                 seed: int) -> Sampler:
    """The registered sampler ``name`` for clients with these example counts."""
    if name == SamplerName.WEIGHTED:
        return WeightedSampler(num_examples=num_examples, size=size, seed=seed)
    if name == SamplerName.ROUND_ROBIN:
        return RoundRobinSampler(num_clients=len(num_examples), size=size, seed=seed)
    return UniformSampler(num_clients=len(num_examples), size=size, seed=seed)
