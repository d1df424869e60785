"""Update attacks as plain functions over flat updates (``P`` values, or ``K x P`` honest
ones): what a malicious client sends in place of the update it trained.

* :func:`sign_flip`: ``-scale * u`` (the update pushed the other way).
* :func:`gaussian`: ``N(0, std^2)`` noise in every coordinate, in place of the update
  (Blanchard et al. 2017's Gaussian Byzantine worker).
* :func:`boosted`: ``boost * u`` (model replacement, Bagdasaryan et al. 2020: with
  ``boost = n / server_lr`` the attacker's model replaces the average).
* :func:`alie`: "a little is enough" (Baruch et al., NeurIPS 2019): ``mu - z * sigma`` from the
  coordinate-wise mean and standard deviation of the round's honest updates (population
  std; an omniscient attacker), with the paper's ``z_max = Phi^-1((n - s) / n)``,
  ``s = floor(n / 2 + 1) - m`` for ``n`` updates of which ``m`` are malicious.
* :func:`ipm`: inner product manipulation (Xie, Koyejo and Gupta, UAI 2020):
  ``-epsilon * mu``, so the aggregate's inner product with the honest mean turns negative
  when enough of it gets through.

Every malicious client of a round sends the same crafted update (ALIE, IPM), as the papers do.

Example:
    >>> honest = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    >>> ipm(honest, epsilon=0.5)
    tensor([-1.0000, -0.5000])
    >>> alie(honest, z=1.0)
    tensor([1., 0.])
"""

from __future__ import annotations

from statistics import NormalDist

import torch

from fedloom.core.errors import ConfigError


def sign_flip(update: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
    return update * -scale


def gaussian(update: torch.Tensor, *, std: float, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(update.shape, generator=generator, dtype=update.dtype) * std


def boosted(update: torch.Tensor, *, boost: float) -> torch.Tensor:
    return update * boost


def alie_z(n: int, m: int) -> float:
    """Baruch et al.'s ``z_max`` for ``n`` updates of which ``m`` are malicious: the largest
    shift that keeps the malicious update nearer the mean than ``s`` honest ones."""
    if not 0 < m < n:
        raise ConfigError(f"alie: needs 0 < m < n (malicious m = {m} of n = {n} updates)")
    s = (n // 2 + 1) - m
    return NormalDist().inv_cdf((n - s) / n)


def alie(honest: torch.Tensor, *, z: float) -> torch.Tensor:
    """``mean - z * std`` of the honest ``K x P`` updates, per coordinate."""
    return honest.mean(dim=0) - z * honest.std(dim=0, correction=0)


def ipm(honest: torch.Tensor, *, epsilon: float) -> torch.Tensor:
    """``-epsilon * mean`` of the honest ``K x P`` updates."""
    return honest.mean(dim=0) * -epsilon


__all__ = ["alie", "alie_z", "boosted", "gaussian", "ipm", "sign_flip"]
