"""Distance-based selection: Krum and multi-Krum (Blanchard et al., NeurIPS 2017) and Bulyan
(El Mhamdi et al., ICML 2018).

Choices where descriptions differ, stated once:

* **Krum's score** of update ``i`` is the sum of squared L2 distances to its ``n - f - 2``
  nearest other updates (the paper's ``i -> j``), which needs ``n > 2f + 2``.
* **Multi-Krum** scores every update once as Krum does and averages the ``m`` best
  (default ``m = n - f``), uniformly, as the paper does.
* **Ties** (equal scores, which the papers leave open) go to the update with the smaller
  projection on a fixed vector (``linspace(1, 2, P)``), so the result never depends on the
  order of the rows; only identical updates tie on it, and then the choice does not matter.
* **Bulyan** (needs ``n >= 4f + 3``) first selects ``theta = n - 2f`` updates by applying Krum
  repeatedly to what is left (each pick removed before the next). The later picks run on fewer
  than ``2f + 3`` updates, where Krum's ``n - f - 2`` is below one; they use
  ``max(s - f - 2, 1)`` neighbours of the ``s`` left, as Flower's ``bulyan`` does. Then, in
  every coordinate, it averages the ``beta = theta - 2f`` selected values closest to the
  coordinate's median (the paper's definition; a trimmed mean around the median). Each output
  coordinate is within the honest values' spread of their range, whatever the Byzantine values.

None of them uses the weights (a Byzantine client could claim any example count); ``weights``
is accepted for the common signature only. Distances come from one ``cdist`` in float64 over
the ``K x P`` matrix; the per-coordinate step is one ``sort``/``topk`` along dim 0.

Example:
    >>> updates = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]])
    >>> krum(updates, None, f=1)
    tensor([1.])
    >>> multi_krum(updates, None, f=1, m=3)
    tensor([1.])
"""

from __future__ import annotations

import torch

from fedloom.aggregators._matrix import check_updates, require, sorted_median


def krum_problem(n: int, f: int) -> str | None:
    """Why Krum cannot run on ``n`` updates with ``f`` Byzantine (None: it can)."""
    if f < 0:
        return f"krum: f = {f} must be >= 0"
    if n <= 2 * f + 2:
        return (f"krum: f = {f} needs n > 2f + 2 = {2 * f + 2} updates (each score sums the "
                f"n - f - 2 nearest), got n = {n}")
    return None


def bulyan_problem(n: int, f: int) -> str | None:
    """Why Bulyan cannot run on ``n`` updates with ``f`` Byzantine (None: it can)."""
    if f < 0:
        return f"bulyan: f = {f} must be >= 0"
    if n < 4 * f + 3:
        return f"bulyan: f = {f} needs n >= 4f + 3 = {4 * f + 3} updates, got n = {n}"
    return None


def squared_distances(updates: torch.Tensor) -> torch.Tensor:
    """The ``K x K`` squared L2 distances between rows, in float64."""
    x = updates.to(torch.float64)
    return torch.cdist(x, x).square_()


def canonical(updates: torch.Tensor) -> torch.Tensor:
    """The rows in an order that depends on their values only (see ties, in the module)."""
    p = updates.shape[1]
    key = updates.to(torch.float64) @ torch.linspace(1.0, 2.0, p, dtype=torch.float64)
    return updates.index_select(0, torch.sort(key, stable=True).indices)


def krum_scores(dist: torch.Tensor, f: int) -> torch.Tensor:
    """Each row's Krum score from squared distances ``dist`` among ``s`` updates: the sum of
    its ``max(s - f - 2, 1)`` smallest distances to the others."""
    s = dist.shape[0]
    if s == 1:
        return torch.zeros(1, dtype=dist.dtype)
    neighbours = max(s - f - 2, 1)
    others = dist + torch.diag(torch.full((s,), float("inf"), dtype=dist.dtype))
    return others.topk(neighbours, dim=1, largest=False).values.sum(dim=1)


def krum(updates: torch.Tensor, weights: torch.Tensor | None = None, *, f: int) -> torch.Tensor:
    """The update with the lowest Krum score (see the module). Raises ConfigError unless
    ``n > 2f + 2``."""
    n = check_updates(updates, "krum")
    require(krum_problem(n, f) is None, krum_problem(n, f) or "")
    updates = canonical(updates)
    scores = krum_scores(squared_distances(updates), f)
    return updates[int(scores.argmin())].clone()


def multi_krum(updates: torch.Tensor, weights: torch.Tensor | None = None, *, f: int,
               m: int | None = None) -> torch.Tensor:
    """The mean of the ``m`` updates with the lowest Krum scores (``m`` None: ``n - f``).
    Raises ConfigError unless ``n > 2f + 2`` and ``1 <= m <= n``."""
    n = check_updates(updates, "multi_krum")
    require(krum_problem(n, f) is None, (krum_problem(n, f) or "").replace("krum", "multi_krum"))
    keep = n - f if m is None else m
    require(1 <= keep <= n, f"multi_krum: m = {m} must be in [1, n = {n}]")
    updates = canonical(updates)
    scores = krum_scores(squared_distances(updates), f)
    best = _stable_smallest(scores, keep)
    return updates.index_select(0, best).mean(dim=0)


def bulyan_selection(updates: torch.Tensor, f: int) -> torch.Tensor:
    """Bulyan's ``theta = n - 2f`` rows, picked by Krum one at a time (see the module);
    ties go to the lower row (:func:`bulyan` puts the rows in :func:`canonical` order first)."""
    n = updates.shape[0]
    dist = squared_distances(updates)
    left = list(range(n))
    picked: list[int] = []
    for _ in range(n - 2 * f):  # a loop over clients, never over parameters
        idx = torch.tensor(left)
        scores = krum_scores(dist.index_select(0, idx).index_select(1, idx), f)
        picked.append(left.pop(int(scores.argmin())))
    return torch.tensor(picked)


def bulyan(updates: torch.Tensor, weights: torch.Tensor | None = None, *, f: int) -> torch.Tensor:
    """Bulyan over Krum (see the module). Raises ConfigError unless ``n >= 4f + 3``."""
    n = check_updates(updates, "bulyan")
    require(bulyan_problem(n, f) is None, bulyan_problem(n, f) or "")
    updates = canonical(updates)
    chosen = updates.index_select(0, bulyan_selection(updates, f))
    beta = chosen.shape[0] - 2 * f
    ordered = chosen.sort(dim=0).values
    centre = sorted_median(ordered)
    nearest = (ordered - centre).abs().topk(beta, dim=0, largest=False).indices
    return ordered.gather(0, nearest).mean(dim=0)


def _stable_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` smallest scores, ties to the lower index."""
    return torch.sort(scores, stable=True).indices[:k]


__all__ = ["bulyan", "bulyan_problem", "bulyan_selection", "canonical", "krum", "krum_problem",
           "krum_scores", "multi_krum", "squared_distances"]
