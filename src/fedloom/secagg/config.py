"""The ``secagg`` section of a run config, and the numbers one round of the protocol runs with."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedloom.core.validate import Problems


@dataclass(frozen=True, slots=True, kw_only=True)
class SecAggConfig:
    """Secure aggregation (Bonawitz et al. 2017; SecAgg+ graph of Bell et al. 2020).

    Attributes:
        enabled: aggregate every round with the protocol; the server learns only the sum.
        threshold: shares needed to rebuild a client's secrets (``t``); null: a majority of
            the share holders (the client and its neighbours). It is also the fewest clients a
            round may end with.
        neighbours: the SecAgg+ degree ``k`` (even): each client masks with and shares its
            secrets among ``k`` others; null: every other client of the cohort (SecAgg).
        clip_range: each update coordinate is clipped to ``[-clip_range, clip_range]``
            before it is quantised.
        quant_bits: bits of the signed fixed-point value of one coordinate (sign included).
        ring_bits: the masked vectors live in ``Z_{2^ring_bits}``; the sum of
            ``num_examples * quantised update`` over the cohort must fit in it.
    """

    enabled: bool = False
    threshold: int | None = None
    neighbours: int | None = None
    clip_range: float = 1.0
    quant_bits: int = 20
    ring_bits: int = 64

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.threshold is None or self.threshold >= 2, "threshold", self.threshold,
                "must be >= 2 (one share alone would reveal a secret) or null")
        p.check(self.neighbours is None or (self.neighbours >= 2 and self.neighbours % 2 == 0),
                "neighbours", self.neighbours, "must be an even number >= 2 or null (all)")
        p.check(self.threshold is None or self.neighbours is None
                or self.threshold <= self.neighbours + 1, "threshold", self.threshold,
                f"must be <= neighbours + 1 = {(self.neighbours or 0) + 1} (the share holders)")
        p.check(math.isfinite(self.clip_range) and self.clip_range > 0, "clip_range",
                self.clip_range, "must be a finite number > 0")
        p.check(2 <= self.quant_bits <= 32, "quant_bits", self.quant_bits, "must be in [2, 32]")
        p.check(self.quant_bits + 8 <= self.ring_bits <= 64, "ring_bits", self.ring_bits,
                f"must be in [quant_bits + 8 = {self.quant_bits + 8}, 64]")
        p.raise_if_any()


@dataclass(frozen=True, slots=True, kw_only=True)
class Quantizer:
    """Fixed point in ``Z_{2^ring_bits}``: ``q = round(clip(x) * scale)`` with
    ``scale = (2^(quant_bits-1) - 1) / clip_range``."""

    clip_range: float
    quant_bits: int
    ring_bits: int

    @classmethod
    def of(cls, cfg: SecAggConfig) -> Quantizer:
        return cls(clip_range=cfg.clip_range, quant_bits=cfg.quant_bits, ring_bits=cfg.ring_bits)

    @property
    def scale(self) -> float:
        return ((1 << (self.quant_bits - 1)) - 1) / self.clip_range

    @property
    def max_weight(self) -> int:
        """The largest total example count whose weighted sum cannot wrap around the ring."""
        return ((1 << (self.ring_bits - 1)) - 1) // (1 << (self.quant_bits - 1))


__all__ = ["Quantizer", "SecAggConfig"]
