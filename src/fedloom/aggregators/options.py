"""The options of each aggregator: the keys beside ``name`` in a run config's ``aggregator``
section (``aggregator.name=krum aggregator.f=2``), checked when they are built."""

from __future__ import annotations

from dataclasses import dataclass

from fedloom.core.validate import Problems


@dataclass(frozen=True, slots=True, kw_only=True)
class NoOptions:
    """``mean`` (the algorithm's own example-weighted mean) and ``median`` take no options."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrimmedMeanOptions:
    """``beta``: the share of values dropped at each end of every coordinate."""

    beta: float = 0.1

    def __post_init__(self) -> None:
        p = Problems()
        p.check(0 <= self.beta < 0.5, "beta", self.beta, "must be in [0, 0.5)")
        p.raise_if_any()


@dataclass(frozen=True, slots=True, kw_only=True)
class ByzantineOptions:
    """``f``: how many Byzantine updates a round may hold (Krum, Bulyan)."""

    f: int = 1

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.f >= 0, "f", self.f, "must be >= 0")
        p.raise_if_any()


@dataclass(frozen=True, slots=True, kw_only=True)
class MultiKrumOptions:
    """``f`` as Krum's; ``m``: how many of the best-scored updates are averaged (null:
    ``n - f``)."""

    f: int = 1
    m: int | None = None

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.f >= 0, "f", self.f, "must be >= 0")
        p.check(self.m is None or self.m >= 1, "m", self.m, "must be >= 1 or null (n - f)")
        p.raise_if_any()


@dataclass(frozen=True, slots=True, kw_only=True)
class GeometricMedianOptions:
    """RFA's smoothed Weiszfeld: at most ``iterations`` steps, smoothing ``nu``, stop once the
    objective improves by less than ``ftol`` of itself."""

    iterations: int = 4
    nu: float = 1e-5
    ftol: float = 1e-6

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.iterations >= 1, "iterations", self.iterations, "must be >= 1")
        p.check(self.nu > 0, "nu", self.nu, "must be > 0")
        p.check(self.ftol >= 0, "ftol", self.ftol, "must be >= 0")
        p.raise_if_any()


@dataclass(frozen=True, slots=True, kw_only=True)
class NormBoundOptions:
    """``bound``: the largest L2 norm an update keeps."""

    bound: float = 1.0

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.bound > 0, "bound", self.bound, "must be > 0 (an L2 norm)")
        p.raise_if_any()


@dataclass(frozen=True, slots=True, kw_only=True)
class CenteredClipOptions:
    """``tau``: the clipping radius around the previous round's update; ``iterations``:
    clipped-mean steps per round (the paper's L)."""

    tau: float = 1.0
    iterations: int = 1

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.tau > 0, "tau", self.tau, "must be > 0 (an L2 radius)")
        p.check(self.iterations >= 1, "iterations", self.iterations, "must be >= 1")
        p.raise_if_any()


__all__ = ["ByzantineOptions", "CenteredClipOptions", "GeometricMedianOptions",
           "MultiKrumOptions", "NoOptions", "NormBoundOptions", "TrimmedMeanOptions"]
