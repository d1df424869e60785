"""Central (client-level) DP-FedAvg as :class:`~fedloom.aggregators.UpdateRule`\\ s.

:class:`GaussianSum` is DP-FedAvg's server step (McMahan et al., ICLR 2018, "Learning
Differentially Private Recurrent Language Models", Algorithm 1 with the fixed-denominator
estimator): each client update is clipped to L2 norm ``C``, the clipped updates are summed with
equal weight, ``N(0, z^2 C^2)`` is added to every coordinate of the sum, and the sum is divided
by the *expected* cohort size ``m`` (``cohort.size``), not by the number of results. A fixed
denominator keeps the sensitivity of the mean at ``C / m`` whatever the cohort turns out to be
(a failed or dropped client does not change the scale, so it cannot leak through it); the price
is a mean biased towards zero by the share of the cohort that did not answer. Example counts
are not used as weights (a client's count would itself need protecting).

With ``adaptive`` the clip norm is server state (``rule/clip`` in the checkpointed extras)
updated after each round by the geometric quantile rule of Andrew et al. (NeurIPS 2021,
"Differentially Private Learning with Adaptive Clipping"): with ``b_k = 1[||u_k|| <= C]`` the
noised share of unclipped updates is ``b = (sum_k (b_k - 1/2) + N(0, s^2)) / m + 1/2`` and
``C <- C exp(-lr (b - target_quantile))``. Its own noise ``s`` (``count_stddev``, default
``m / 20``) costs privacy too, so the updates get ``z_u = (z^-2 - (2 s)^-2)^(-1/2)`` and the
round as a whole is a Gaussian mechanism with multiplier ``z`` (their Theorem 1; TF Federated
computes it the same way). All noise comes from the server's ``(seed, round)`` streams.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from fedloom.aggregators.rule import Combination
from fedloom.core.errors import ConfigError
from fedloom.core.rng import SERVER, torch_generator


def clip_rows(updates: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row scaled to L2 norm at most ``clip``; returns (clipped rows, row norms)."""
    norms = torch.linalg.vector_norm(updates, dim=1, dtype=torch.float64)
    scale = (clip / norms.clamp(min=1e-12)).clamp(max=1.0)
    return updates * scale.to(updates.dtype).unsqueeze(1), norms


def update_noise_multiplier(total: float, count_stddev: float) -> float:
    """Andrew et al.'s share of the noise multiplier left for the updates when the count is
    noised with standard deviation ``count_stddev``."""
    if total == 0:
        return 0.0
    rest = total ** -2 - (2 * count_stddev) ** -2
    if rest <= 0:
        raise ConfigError(
            f"privacy.count_stddev = {count_stddev}: with privacy.noise_multiplier = {total} "
            f"the noised count would spend the whole privacy budget; it must be > "
            f"{total / 2} (noise_multiplier / 2), e.g. a larger cohort.size or count_stddev")
    return float(rest ** -0.5)


class GaussianSum:
    """Clip, sum, add Gaussian noise, divide by the expected cohort size (see the module
    docstring); ``adaptive`` moves the clip norm towards ``target_quantile`` of the norms.

    Args:
        clip: the clip norm (the initial one when adaptive).
        noise_multiplier: ``z``: the noise's standard deviation over the clip norm.
        expected_cohort: ``m``, the fixed denominator.
        seed: the run's seed; noise comes from ``(seed, round, server, purpose)``.
    """

    def __init__(self, *, clip: float, noise_multiplier: float, expected_cohort: int, seed: int,
                 adaptive: bool = False, target_quantile: float = 0.5, clip_lr: float = 0.2,
                 count_stddev: float | None = None) -> None:
        self.name = "adaptive_dp" if adaptive else "central_dp"
        self.clip, self.z, self.m, self.seed = clip, noise_multiplier, expected_cohort, seed
        self.adaptive, self.quantile, self.clip_lr = adaptive, target_quantile, clip_lr
        self.count_stddev = count_stddev if count_stddev is not None else expected_cohort / 20
        self.update_z = update_noise_multiplier(noise_multiplier, self.count_stddev) \
            if adaptive else noise_multiplier

    def init_extras(self, size: int) -> dict[str, torch.Tensor]:
        return {"clip": torch.tensor(self.clip, dtype=torch.float64)} if self.adaptive else {}

    def combine(self, round: int, updates: torch.Tensor, weights: torch.Tensor,
                extras: Mapping[str, torch.Tensor]) -> Combination:
        clip = float(extras["clip"]) if self.adaptive else self.clip
        clipped, norms = clip_rows(updates, clip)
        total = clipped.sum(dim=0)
        if self.update_z > 0:
            gen = torch_generator(self.seed, round, SERVER, "dp_central")
            noise = torch.randn(total.shape, generator=gen, dtype=total.dtype)
            total.add_(noise, alpha=self.update_z * clip)
        metrics: dict[str, float] = {"clip_norm": clip}
        out_extras: dict[str, torch.Tensor] = {}
        if self.adaptive:
            unclipped = self._noised_share(round, norms, clip)
            new_clip = clip * math.exp(-self.clip_lr * (unclipped - self.quantile))
            out_extras["clip"] = torch.tensor(new_clip, dtype=torch.float64)
            metrics["unclipped_share"] = unclipped
        return Combination(update=total.div_(self.m), extras=out_extras, metrics=metrics,
                           weight=float(weights.sum()))

    def _noised_share(self, round: int, norms: torch.Tensor, clip: float) -> float:
        """Andrew et al.'s noised estimate of the share of updates with norm <= clip."""
        below = float(((norms <= clip).double() - 0.5).sum())
        if self.z > 0:
            gen = torch_generator(self.seed, round, SERVER, "dp_count")
            below += float(torch.randn((), generator=gen, dtype=torch.float64)) \
                * self.count_stddev
        return below / self.m + 0.5


__all__ = ["GaussianSum", "clip_rows", "update_noise_multiplier"]
