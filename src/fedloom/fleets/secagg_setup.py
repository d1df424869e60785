"""Turning ``secagg.enabled`` into a fleet: the checks and the wrapper, in one place."""

from __future__ import annotations

from fedloom.algorithms.base import Algorithm
from fedloom.algorithms.combined import Combined
from fedloom.core.errors import ConfigError
from fedloom.fleets.base import Fleet
from fedloom.fleets.secagg import SecAggFleet
from fedloom.secagg import SecAggConfig


def check_secagg_algorithm(algorithm: Algorithm) -> None:
    """Refuse algorithms that need more than the sum of the updates, naming them."""
    if isinstance(algorithm, Combined):
        raise ConfigError(f"secagg.enabled = true: the rule {algorithm.rule.name!r} combined "
                          f"with {algorithm.name} needs the individual updates, and secure "
                          "aggregation gives the server only their sum")
    if algorithm.asynchronous or not algorithm.reducible:
        raise ConfigError(f"secagg.enabled = true: algorithm {algorithm.name!r} reads each "
                          "client's result (it is not an example-weighted mean), and secure "
                          "aggregation gives the server only the sum; use fedavg, fedprox or "
                          "a fedopt variant")


def secure_fleet(fleet: Fleet, cfg: SecAggConfig, *, seed: int) -> Fleet:
    """``fleet`` with its rounds summed by secure aggregation (remote clients run the
    protocol over gRPC; simulated ones in memory)."""
    from fedloom.fleets.grpc import GrpcFleet
    from fedloom.fleets.secagg_grpc import GrpcSecAggFleet

    if isinstance(fleet, GrpcFleet):
        return GrpcSecAggFleet(fleet, cfg, seed=seed)
    return SecAggFleet(fleet, cfg, seed=seed)


__all__ = ["check_secagg_algorithm", "secure_fleet"]
