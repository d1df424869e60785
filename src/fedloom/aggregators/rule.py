"""The contract between an averaging algorithm and the rule that combines its updates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass(frozen=True, slots=True, kw_only=True)
class Combination:
    """A rule's answer for one round.

    Attributes:
        update: the combined update, ``P`` values (added to the global model).
        extras: the rule's server-side tensors for the next round (kept in the server state,
            so checkpoints carry them; e.g. an adaptive clipping norm).
        metrics: numbers for the round's metrics row (e.g. ``clip_norm``).
        weight: the example count the combined update stands for.
    """

    update: torch.Tensor
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    weight: float = 1.0


class UpdateRule(Protocol):
    """Combines a round's updates. ``name`` names it in errors and metrics."""

    name: str

    def init_extras(self, size: int) -> dict[str, torch.Tensor]:
        """The rule's server-side tensors before round 1 (``size``: values per update)."""
        ...

    def combine(self, round: int, updates: torch.Tensor, weights: torch.Tensor,
                extras: Mapping[str, torch.Tensor]) -> Combination:
        """``updates``: ``K x P`` (one row per client, sorted by client id); ``weights``: the
        ``K`` example counts (float64); ``extras``: what :meth:`init_extras` or the last
        round's :class:`Combination` left."""
        ...


__all__ = ["Combination", "UpdateRule"]
