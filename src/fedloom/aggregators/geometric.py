"""Norm-based rules: the geometric median (RFA, Pillutla et al., IEEE TSP 2022), norm bounding
(Sun et al. 2019, "Can you really backdoor federated learning?") and centered clipping
(Karimireddy, He and Jaggi, ICML 2021).

* :func:`geometric_median` minimises ``sum_i a_i ||v - w_i||`` with RFA's smoothed Weiszfeld
  iteration ``v <- sum_i b_i w_i / sum_i b_i``, ``b_i = a_i / max(nu, ||v - w_i||)``, started
  at the weighted mean; it stops after ``iterations`` steps or once the objective improves by
  less than ``ftol`` of itself. The weights ``a_i`` are the (normalised) example counts, as in
  RFA (uniform when None).
* :func:`norm_bound` scales every update whose L2 norm exceeds ``bound`` down to it, then takes
  the weighted mean (FedAvg's, uniform when None).
* :func:`centered_clip` runs ``iterations`` steps of
  ``v <- v + sum_i a_i (w_i - v) min(1, tau / ||w_i - v||)`` from ``center`` (the paper starts
  from the previous aggregate, its momentum; :class:`~fedloom.aggregators.rules.RobustRule`
  keeps the previous round's update for it). The paper averages uniformly (``a_i = 1/n``,
  weights None); given weights, ``a_i`` are them normalised.

All three work on whole rows of the ``K x P`` matrix (row norms, one matrix-vector product per
iteration); nothing loops over parameters.

Example:
    >>> updates = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    >>> norm_bound(updates, None, bound=1.0)
    tensor([0.3000, 0.4000])
"""

from __future__ import annotations

import torch

from fedloom.aggregators._matrix import normalised, require
from fedloom.core.errors import AggregationError


def geometric_median(updates: torch.Tensor, weights: torch.Tensor | None = None, *,
                     iterations: int = 4, nu: float = 1e-5,
                     ftol: float = 1e-6) -> torch.Tensor:
    """RFA's smoothed Weiszfeld approximation of the weighted geometric median (see the
    module). Raises ConfigError for ``iterations < 1``, ``nu <= 0`` or ``ftol < 0``."""
    require(iterations >= 1, f"geometric_median: iterations = {iterations} must be >= 1")
    require(nu > 0, f"geometric_median: nu = {nu!r} (the smoothing) must be > 0")
    require(ftol >= 0, f"geometric_median: ftol = {ftol!r} must be >= 0")
    alpha = normalised(weights, updates, "geometric_median")
    v = alpha @ updates
    objective = _objective(updates, alpha, v)
    for _ in range(iterations):
        dist = (updates - v).norm(dim=1)
        beta = alpha / dist.clamp(min=nu)
        v = (beta / beta.sum()) @ updates
        previous, objective = objective, _objective(updates, alpha, v)
        if abs(previous - objective) <= ftol * objective:
            break
    return v


def _objective(updates: torch.Tensor, alpha: torch.Tensor, v: torch.Tensor) -> float:
    return float(alpha @ (updates - v).norm(dim=1))


def clip_rows(rows: torch.Tensor, bound: float) -> torch.Tensor:
    """Each row scaled by ``min(1, bound / ||row||)``."""
    norms = rows.norm(dim=1, keepdim=True)
    scale: torch.Tensor = norms.clamp(min=bound).reciprocal().mul(bound)
    return rows * scale


def norm_bound(updates: torch.Tensor, weights: torch.Tensor | None = None, *,
               bound: float) -> torch.Tensor:
    """Every update clipped to L2 norm ``bound``, then their weighted mean (see the module).
    Raises ConfigError unless ``bound > 0``."""
    require(bound > 0, f"norm_bound: bound = {bound!r} (an L2 norm) must be > 0")
    alpha = normalised(weights, updates, "norm_bound")
    return alpha @ clip_rows(updates, bound)


def centered_clip(updates: torch.Tensor, weights: torch.Tensor | None = None, *, tau: float,
                  iterations: int = 1, center: torch.Tensor | None = None) -> torch.Tensor:
    """Centered clipping (see the module): ``iterations`` clipped-mean steps of radius ``tau``
    around ``center`` (None: zeros). Raises ConfigError unless ``tau > 0`` and
    ``iterations >= 1``."""
    require(tau > 0, f"centered_clip: tau = {tau!r} (the clipping radius) must be > 0")
    require(iterations >= 1, f"centered_clip: iterations = {iterations} must be >= 1")
    alpha = normalised(weights, updates, "centered_clip")
    size = updates.shape[1]
    v = torch.zeros(size, dtype=updates.dtype) if center is None else center.to(updates.dtype)
    if v.shape != (size,):
        raise AggregationError(f"centered_clip: center has shape {tuple(v.shape)}, "
                               f"expected ({size},)")
    for _ in range(iterations):
        v = v + alpha @ clip_rows(updates - v, tau)
    return v


__all__ = ["centered_clip", "clip_rows", "geometric_median", "norm_bound"]
