"""Client-side mechanisms, declared in the algorithm's client half so every fleet (and a deployed
client) runs them before anything leaves the client.

- Local DP (:class:`LocalNoise`): the algorithm's ``finish`` hook is wrapped so the uplink's
  update ``params - global`` is clipped to L2 norm ``C`` and ``N(0, z^2 C^2)`` is added to each
  coordinate, drawn from the client's ``(seed, round, client_id, "dp_local")`` stream. The server
  (and the wire) only ever see the noised update. Metrics the client reports (its training
  loss) are not privatised.
- Sample-level DP-SGD: :class:`~fedloom.algorithms.base.PerExampleClip` on the spec; the serial
  trainer and the vectorized fleet run it (:mod:`fedloom.privacy.sample`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from fedloom.algorithms.base import Finish, LocalSpec, PerExampleClip
from fedloom.core.packages import ClientResult, Downlink
from fedloom.core.rng import torch_generator


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalNoise:
    """A picklable ``finish`` hook: the inner one (if any), then clip and noise the update."""

    clip: float
    noise_multiplier: float
    seed: int
    inner: Finish | None = None

    def __call__(self, result: ClientResult, downlink: Downlink) -> ClientResult:
        if self.inner is not None:
            result = self.inner(result, downlink)
        start = downlink.params.to(result.params.device, result.params.dtype)
        update = result.params - start
        norm = float(torch.linalg.vector_norm(update, dtype=torch.float64))
        if norm > self.clip:
            update.mul_(self.clip / norm)
        if self.noise_multiplier > 0:
            gen = torch_generator(self.seed, downlink.round, downlink.client_id, "dp_local")
            noise = torch.randn(update.shape, generator=gen, dtype=update.dtype)
            update.add_(noise.to(update.device), alpha=self.noise_multiplier * self.clip)
        return dataclasses.replace(result, params=start + update)


def local_dp(local: LocalSpec, *, clip: float, noise_multiplier: float, seed: int) -> LocalSpec:
    """``local`` whose uplink is clipped and noised on the client (local DP)."""
    return dataclasses.replace(local, finish=LocalNoise(
        clip=clip, noise_multiplier=noise_multiplier, seed=seed, inner=local.finish))


def sample_dp(local: LocalSpec, *, clip: float, noise_multiplier: float, seed: int) -> LocalSpec:
    """``local`` trained with DP-SGD (per-example clipping and noise)."""
    return dataclasses.replace(local, per_example=PerExampleClip(
        clip=clip, noise_multiplier=noise_multiplier, seed=seed))


__all__ = ["LocalNoise", "local_dp", "sample_dp"]
