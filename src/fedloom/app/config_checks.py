"""The checks between a run config's sections: what may be combined with what, and why not
(robust aggregation, SecAgg, differential privacy, compression, topologies, attacks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedloom.compression.config import check_compression
from fedloom.core.validate import Problems
from fedloom.privacy.config import Mechanism

if TYPE_CHECKING:
    from fedloom.app.config import RunConfig


def check_sections(cfg: RunConfig, p: Problems) -> None:
    """Record every combination of sections that cannot run, each with its reason."""
    _check_aggregator(cfg, p)
    _check_secagg(cfg, p)
    _check_privacy(cfg, p)
    check_compression(cfg.compression, p, algorithm=cfg.algorithm.name,
                      topology=cfg.topology is not None, secagg=cfg.secagg.enabled)


def _check_privacy(cfg: RunConfig, p: Problems) -> None:
    """Differential privacy is accounted per synchronous round of a flat run; the server-side
    mechanisms need each client's update (see fedloom.privacy)."""
    dp = cfg.privacy
    if dp is None:
        return
    mech = f"privacy.mechanism = {dp.mechanism.value!r}"
    p.check(cfg.topology is None, "privacy.mechanism", dp.mechanism.value,
            "privacy is accounted per round of a flat run; a topology (hierarchy or gossip) "
            "has none, so it cannot be combined with it")
    if dp.mechanism not in (Mechanism.CENTRAL, Mechanism.ADAPTIVE):
        return  # client-side noise: robust aggregation and SecAgg see only noised updates
    p.check(not cfg.aggregator.robust, "aggregator.name", cfg.aggregator.name,
            f"{mech} replaces the mean by a clipped, noised sum whose sensitivity is C / m; "
            "a robust aggregate has another sensitivity that DP-FedAvg's accountant does not "
            "cover, so they are not combined (use privacy.mechanism = 'local' or 'sample' "
            "with a robust aggregator)")
    p.check(not cfg.secagg.enabled, "secagg.enabled", cfg.secagg.enabled,
            f"{mech} clips each client update on the server, which SecAgg hides from it; "
            "distributed noise (each client adding its share) is not implemented, so use "
            "privacy.mechanism = 'local' or 'sample' with secure aggregation")


def _check_aggregator(cfg: RunConfig, p: Problems) -> None:
    """A robust aggregator fits the cohort and the run's shape."""
    agg = cfg.aggregator
    if not agg.robust:
        return
    problem = agg.problem(cfg.cohort.size)
    p.check(problem is None, "aggregator.name", agg.name,
            f"{problem} (cohort.size = {cfg.cohort.size})")
    p.check(cfg.topology is None, "aggregator.name", agg.name,
            "robust aggregation replaces a flat run's mean; a topology (hierarchy or gossip) "
            "aggregates per node and is not combined with it")
    p.check(cfg.topology is None or not cfg.attack.active, "attack.name", cfg.attack.name.value,
            "attacks are simulated on a flat run; a topology is not combined with them")


def _check_secagg(cfg: RunConfig, p: Problems) -> None:
    """Secure aggregation gives the server only the sum of the updates: refuse what needs
    more, and thresholds the cohort cannot meet."""
    sa = cfg.secagg
    if not sa.enabled:
        return
    p.check(not cfg.aggregator.robust, "aggregator.name", cfg.aggregator.name,
            "robust aggregation needs the individual updates, and secure aggregation "
            "(secagg.enabled = true) gives the server only their sum; use one of them")
    p.check(cfg.topology is None, "secagg.enabled", True,
            "secure aggregation runs in a flat run; a topology is not combined with it")
    holders = min(sa.neighbours or cfg.cohort.size, cfg.cohort.size - 1) + 1
    p.check(sa.threshold is None or sa.threshold <= holders, "secagg.threshold", sa.threshold,
            f"must be <= {holders}: each secret has {holders} holders with cohort.size = "
            f"{cfg.cohort.size} and secagg.neighbours = {sa.neighbours}")
    p.check(cfg.cohort.size >= 2, "cohort.size", cfg.cohort.size,
            "secure aggregation needs at least 2 clients per round")
