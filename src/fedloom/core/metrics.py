"""Metrics that combine themselves: a weighted mean adds its sum and its weight."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Mean:
    """A weighted mean kept as (weighted sum, total weight), so that means add exactly.

    Example:
        >>> (Mean.of(1.0, 2) + Mean.of(4.0, 1)).value
        2.0
    """

    total: float
    weight: float

    @classmethod
    def of(cls, value: float, weight: float = 1.0) -> Mean:
        return cls(value * weight, weight)

    def __add__(self, other: Mean) -> Mean:
        return Mean(self.total + other.total, self.weight + other.weight)

    @property
    def value(self) -> float:
        return self.total / self.weight if self.weight else float("nan")


Metrics = Mapping[str, Mean]


def combine(bags: Iterable[Metrics]) -> dict[str, Mean]:
    """Combine metric bags key by key (a key missing from a bag contributes nothing)."""
    out: dict[str, Mean] = {}
    for bag in bags:
        for key, m in bag.items():
            out[key] = out[key] + m if key in out else m
    return out


def values(bag: Metrics) -> dict[str, float]:
    return {k: m.value for k, m in bag.items()}
