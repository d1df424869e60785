"""Aggregators by registry name (``aggregator.name``), as :class:`UpdateRule` objects.

A run config's ``aggregator`` section names one (``aggregator.name=krum``) with its options
beside it (``aggregator.f=2``); :func:`build_rule` turns it into a :class:`RobustRule` that
:class:`~fedloom.algorithms.combined.Combined` puts in place of the algorithm's mean (``mean``,
the default, leaves the algorithm as it is).

**Too few results at run time.** The config is checked against ``cohort.size``, but a round
can come back smaller (dropouts, failed clients, a deadline). A deployment must not stop for
that: a round with fewer updates than the rule needs (Krum and multi-Krum ``n > 2f + 2`` and
``m <= n``, Bulyan ``n >= 4f + 3``) is combined by the coordinate-wise median instead, with a
logged warning, and its metrics row says ``aggregator_fallback = 1`` (0 in rounds that ran the
rule). The median has the highest breakdown point of the rules and needs one update.

Example:
    >>> rule = build_rule(AggregatorConfig(name="krum", options=o.ByzantineOptions(f=1)))
    >>> updates = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]])
    >>> out = rule.combine(1, updates, torch.ones(5, dtype=torch.float64), {})
    >>> out.update, dict(out.metrics)
    (tensor([1.]), {'aggregator_fallback': 0.0})
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fedloom.aggregators import options as o
from fedloom.aggregators.coordinate import median, trimmed_mean
from fedloom.aggregators.geometric import centered_clip, geometric_median, norm_bound
from fedloom.aggregators.krum import bulyan, bulyan_problem, krum, krum_problem, multi_krum
from fedloom.aggregators.rule import Combination
from fedloom.core.errors import ConfigError

log = logging.getLogger(__name__)

#: ``(updates, weights, options, extras) -> update``
Apply = Callable[[torch.Tensor, torch.Tensor, Any, Mapping[str, torch.Tensor]], torch.Tensor]
#: ``(n, options) -> why n updates are too few, or None``
Problem = Callable[[int, Any], str | None]


def _fine(n: int, options: Any) -> str | None:
    return None


def _multi_krum_problem(n: int, opts: o.MultiKrumOptions) -> str | None:
    found = krum_problem(n, opts.f)
    if found is None and opts.m is not None and opts.m > n:
        return f"multi_krum: m = {opts.m} needs at least m updates, got n = {n}"
    return found


@dataclass(frozen=True, slots=True)
class Aggregator:
    """A registered aggregator: its options dataclass, what it does, what it needs."""

    options: type[Any]
    apply: Apply
    problem: Problem = _fine


REGISTRY: Mapping[str, Aggregator] = {
    "mean": Aggregator(o.NoOptions, lambda u, w, opts, x: (w / w.sum()).to(u.dtype) @ u),
    "median": Aggregator(o.NoOptions, lambda u, w, opts, x: median(u)),
    "trimmed_mean": Aggregator(o.TrimmedMeanOptions,
                               lambda u, w, opts, x: trimmed_mean(u, beta=opts.beta)),
    "krum": Aggregator(o.ByzantineOptions, lambda u, w, opts, x: krum(u, f=opts.f),
                       lambda n, opts: krum_problem(n, opts.f)),
    "multi_krum": Aggregator(o.MultiKrumOptions,
                             lambda u, w, opts, x: multi_krum(u, f=opts.f, m=opts.m),
                             _multi_krum_problem),
    "bulyan": Aggregator(o.ByzantineOptions, lambda u, w, opts, x: bulyan(u, f=opts.f),
                         lambda n, opts: bulyan_problem(n, opts.f)),
    "geometric_median": Aggregator(
        o.GeometricMedianOptions, lambda u, w, opts, x: geometric_median(
            u, w, iterations=opts.iterations, nu=opts.nu, ftol=opts.ftol)),
    "norm_bound": Aggregator(o.NormBoundOptions,
                             lambda u, w, opts, x: norm_bound(u, w, bound=opts.bound)),
    "centered_clip": Aggregator(o.CenteredClipOptions, lambda u, w, opts, x: centered_clip(
        u, tau=opts.tau, iterations=opts.iterations, center=x["center"])),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregatorConfig:
    """An ``aggregator`` section: ``name`` picks a registered aggregator; its options sit
    beside it in the YAML (``options`` here, checked against the aggregator's dataclass)."""

    name: str = "mean"
    options: Any = None

    def __post_init__(self) -> None:
        if self.name not in REGISTRY:
            raise ConfigError(f"aggregator.name = {self.name!r}: must be one of "
                              f"{', '.join(sorted(REGISTRY))}")
        if self.options is None:
            object.__setattr__(self, "options", REGISTRY[self.name].options())

    @property
    def robust(self) -> bool:
        """Whether it replaces the algorithm's mean (everything but ``mean``)."""
        return self.name != "mean"

    def problem(self, num_updates: int) -> str | None:
        """Why a round of ``num_updates`` results is too few for it (None: it is not)."""
        return REGISTRY[self.name].problem(num_updates, self.options)


class RobustRule:
    """One registered aggregator as an :class:`~fedloom.aggregators.rule.UpdateRule`, with
    the median fallback of the module docstring. ``centered_clip`` keeps the previous round's
    update (its centre) in the extras, so checkpoints carry it."""

    def __init__(self, config: AggregatorConfig) -> None:
        self.config, self.name = config, config.name
        self._entry = REGISTRY[config.name]

    def init_extras(self, size: int) -> dict[str, torch.Tensor]:
        return {"center": torch.zeros(size)} if self.name == "centered_clip" else {}

    def combine(self, round: int, updates: torch.Tensor, weights: torch.Tensor,
                extras: Mapping[str, torch.Tensor]) -> Combination:
        problem = self.config.problem(updates.shape[0])
        if problem is None:
            update = self._entry.apply(updates, weights, self.config.options, extras)
        else:
            log.warning("round %d: %s; combined by the coordinate-wise median instead",
                        round, problem)
            update = median(updates)
        kept = {"center": update.clone()} if self.name == "centered_clip" else {}
        return Combination(update=update, extras=kept, weight=float(weights.sum()),
                           metrics={"aggregator_fallback": float(problem is not None)})


def build_rule(config: AggregatorConfig) -> RobustRule | None:
    """The rule ``config`` names, or None for ``mean`` (the algorithm's own mean)."""
    return RobustRule(config) if config.robust else None


__all__ = ["REGISTRY", "Aggregator", "AggregatorConfig", "RobustRule", "build_rule"]
