"""Coordinate-wise rules: the median and the trimmed mean (Yin et al., ICML 2018).

Both treat every coordinate on its own, sorting the ``K`` values of each column of the
``K x P`` matrix at once (one ``sort`` along dim 0; no loop over parameters). Both ignore the
weights: an example count is what a client says it has, and a rule that trusted it would let
one client outvote the rest (``weights`` is accepted for the common signature only).

Example:
    >>> updates = torch.tensor([[1.0, 10.0], [2.0, 20.0], [100.0, -50.0]])
    >>> median(updates, None)
    tensor([ 2., 10.])
    >>> trimmed_mean(updates, None, beta=1 / 3)
    tensor([ 2., 10.])
"""

from __future__ import annotations

import torch

from fedloom.aggregators._matrix import check_updates, require, sorted_median


def median(updates: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The coordinate-wise median of the rows (Yin et al. 2018): for an even count, the mean
    of the two middle values of each coordinate. ``weights`` are ignored (see the module).
    Stays inside the honest updates' coordinate range while fewer than half are Byzantine."""
    check_updates(updates, "median")
    return sorted_median(updates.sort(dim=0).values)


def trimmed_count(k: int, beta: float) -> int:
    """Values dropped at each end of a coordinate: ``floor(beta * k)``."""
    return int(beta * k + 1e-9)


def trimmed_mean(updates: torch.Tensor, weights: torch.Tensor | None = None, *,
                 beta: float) -> torch.Tensor:
    """The coordinate-wise ``beta``-trimmed mean (Yin et al. 2018): in each coordinate drop the
    ``b = floor(beta * K)`` largest and ``b`` smallest values and average the remaining
    ``K - 2b`` (unweighted; ``weights`` are ignored). With at most ``b`` Byzantine updates the
    result stays inside the honest updates' coordinate range.

    Raises:
        ConfigError: ``beta`` outside ``[0, 0.5)``.
    """
    require(0 <= beta < 0.5, f"trimmed_mean: beta = {beta!r} must be in [0, 0.5) (the share "
                             "dropped at each end of every coordinate)")
    k = check_updates(updates, "trimmed_mean")
    b = trimmed_count(k, beta)
    if b == 0:
        return updates.mean(dim=0)
    return updates.sort(dim=0).values[b:k - b].mean(dim=0)


__all__ = ["median", "trimmed_count", "trimmed_mean"]
