"""The ``privacy`` section of a run config."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fedloom.core.validate import Problems


class Mechanism(StrEnum):
    """Where the noise is added.

    - ``central``: DP-FedAvg on the server, fixed clip norm (client-level DP).
    - ``adaptive``: the same with the clip norm following a quantile of the update norms.
    - ``local``: every client clips and noises its own update before it leaves (local DP).
    - ``sample``: DP-SGD on every client (per-example clipping and noise; sample-level DP).
    """

    CENTRAL = "central"
    ADAPTIVE = "adaptive"
    LOCAL = "local"
    SAMPLE = "sample"


class AccountantKind(StrEnum):
    """The privacy accountant of Google's ``dp-accounting``: Renyi DP or privacy loss
    distributions (tighter, slower)."""

    RDP = "rdp"
    PLD = "pld"


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacyConfig:
    """Differential privacy for a run (see :mod:`fedloom.privacy`).

    Attributes:
        mechanism: where the noise goes (:class:`Mechanism`).
        noise_multiplier: the Gaussian noise's standard deviation over the clip norm (for
            ``adaptive``: the total, shared with the noised count as Andrew et al. do).
        clip: the L2 clip norm: of each client update (central, local; adaptive: the
            initial one) or of each example's gradient (sample).
        delta: the delta epsilon is reported at.
        target_epsilon: stop before the round that would spend more (null: never stop).
        target_quantile: adaptive: the share of updates the clip norm should leave unclipped.
        clip_lr: adaptive: the geometric learning rate of the clip norm.
        count_stddev: adaptive: the noise on the count of unclipped updates (null: cohort
            size / 20, as Andrew et al. recommend).
        accountant: ``rdp`` or ``pld``.
    """

    mechanism: Mechanism = Mechanism.CENTRAL
    noise_multiplier: float = 1.0
    clip: float = 1.0
    delta: float = 1e-5
    target_epsilon: float | None = None
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_stddev: float | None = None
    accountant: AccountantKind = AccountantKind.RDP

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.noise_multiplier >= 0, "noise_multiplier", self.noise_multiplier,
                "must be >= 0 (0: clipping only, epsilon is infinite)")
        p.check(self.clip > 0, "clip", self.clip, "must be > 0")
        p.check(0 < self.delta < 1, "delta", self.delta, "must be in (0, 1)")
        p.check(self.target_epsilon is None or self.target_epsilon > 0, "target_epsilon",
                self.target_epsilon, "must be > 0 or null (no target)")
        p.check(0 < self.target_quantile < 1, "target_quantile", self.target_quantile,
                "must be in (0, 1)")
        p.check(self.clip_lr > 0, "clip_lr", self.clip_lr, "must be > 0")
        p.check(self.count_stddev is None or self.count_stddev > 0, "count_stddev",
                self.count_stddev, "must be > 0 or null (cohort size / 20)")
        p.raise_if_any()


__all__ = ["AccountantKind", "Mechanism", "PrivacyConfig"]
