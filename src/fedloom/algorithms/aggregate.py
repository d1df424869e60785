"""Aggregation primitives over flat client parameters."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedloom.core.errors import AggregationError
from fedloom.core.packages import ClientResult


def weighted_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_k (w_k / W) x_k``, accumulated in the given order so the bits are reproducible.

    Example:
        >>> weighted_mean([torch.tensor([0.0]), torch.tensor([4.0])], [3, 1])
        tensor([1.])
    """
    if not tensors:
        raise AggregationError("nothing to aggregate: no client results")
    total = float(sum(weights))
    if total <= 0:
        raise AggregationError(f"aggregation weights sum to {total}; they must be positive")
    out = torch.zeros_like(tensors[0])
    for x, w in zip(tensors, weights, strict=True):
        out.add_(x, alpha=w / total)
    return out


def example_weighted_params(results: Sequence[ClientResult]) -> torch.Tensor:
    """FedAvg's average: local parameters weighted by each client's ``num_examples``."""
    return weighted_mean([r.params for r in results], [r.num_examples for r in results])
