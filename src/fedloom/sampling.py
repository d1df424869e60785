"""Cohort sampling: which clients take part in a round, seeded by (seed, round)."""

from __future__ import annotations

from typing import Protocol

import torch

from fedloom.core.errors import ConfigError
from fedloom.core.rng import SERVER, Purpose, torch_generator


class Sampler(Protocol):
    """Chooses a round's cohort; returns client ids sorted ascending."""

    def sample(self, round: int) -> list[int]: ...


class UniformSampler:
    """``size`` clients drawn uniformly without replacement, independently each round.

    Example:
        >>> UniformSampler(num_clients=10, size=3, seed=0).sample(1) == \\
        ...     UniformSampler(num_clients=10, size=3, seed=0).sample(1)
        True
    """

    def __init__(self, *, num_clients: int, size: int, seed: int) -> None:
        if not 1 <= size <= num_clients:
            raise ConfigError(f"cohort.size = {size}: must be in [1, {num_clients}] "
                              f"(data.num_clients = {num_clients})")
        self.num_clients = num_clients
        self.size = size
        self.seed = seed

    def sample(self, round: int) -> list[int]:
        gen = torch_generator(self.seed, round, SERVER, Purpose.COHORT)
        chosen = torch.randperm(self.num_clients, generator=gen)[: self.size]
        return sorted(chosen.tolist())
