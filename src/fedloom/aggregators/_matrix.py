"""Checks shared by the aggregators: the update matrix, the weights, the settings."""

from __future__ import annotations

import torch

from fedloom.core.errors import AggregationError, ConfigError


def check_updates(updates: torch.Tensor, who: str) -> int:
    """The number of updates ``K`` of a ``K x P`` floating-point matrix (else an error)."""
    if updates.dim() != 2 or updates.shape[0] < 1:
        raise AggregationError(f"{who}: updates must be a K x P matrix with K >= 1, got shape "
                               f"{tuple(updates.shape)}")
    if not updates.is_floating_point():
        raise AggregationError(f"{who}: updates must be floating point, got {updates.dtype}")
    return int(updates.shape[0])


def normalised(weights: torch.Tensor | None, updates: torch.Tensor, who: str) -> torch.Tensor:
    """``weights`` scaled to sum to one, in the updates' dtype (None: ``1/K`` each)."""
    k = check_updates(updates, who)
    if weights is None:
        return torch.full((k,), 1.0 / k, dtype=updates.dtype, device=updates.device)
    if weights.shape != (k,):
        raise AggregationError(f"{who}: weights must have shape ({k},) (one per update), got "
                               f"{tuple(weights.shape)}")
    w = weights.to(torch.float64)
    total = float(w.sum())
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not total > 0:
        raise AggregationError(f"{who}: weights must be finite, >= 0 and not all 0, got "
                               f"{weights.tolist()}")
    return (w / total).to(device=updates.device, dtype=updates.dtype)


def require(ok: bool, problem: str) -> None:
    """Refuse an impossible setting with a :class:`ConfigError` naming it."""
    if not ok:
        raise ConfigError(problem)


def sorted_median(ordered: torch.Tensor) -> torch.Tensor:
    """The median of each column of a matrix sorted along dim 0 (the mean of the two middle
    values when the count is even)."""
    k = ordered.shape[0]
    if k % 2:
        return ordered[k // 2].clone()
    return (ordered[k // 2 - 1] + ordered[k // 2]) / 2
