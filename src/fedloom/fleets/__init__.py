"""Fleets: where a round's clients run (``fleet.kind``), resolved in one place."""

from __future__ import annotations

import importlib

from fedloom.core.errors import ConfigError
from fedloom.fleets.base import Fleet
from fedloom.fleets.config import AggregationMode, FleetConfig, FleetKind
from fedloom.fleets.serial import SerialFleet
from fedloom.training.spec import ClientSpec

#: kind -> "module:Class"; imported only when chosen, so the core import stays light.
REGISTRY: dict[FleetKind, str] = {
    FleetKind.SERIAL: "fedloom.fleets.serial:SerialFleet",
    FleetKind.THREAD: "fedloom.fleets.thread:ThreadFleet",
    FleetKind.PROCESS: "fedloom.fleets.process:ProcessFleet",
    FleetKind.VECTORIZED: "fedloom.fleets.vectorized:VectorizedFleet",
    FleetKind.DISTRIBUTED: "fedloom.fleets.distributed:DistributedFleet",
}


def make_fleet(cfg: FleetConfig, spec: ClientSpec) -> Fleet:
    """Build the fleet ``cfg.kind`` names for clients described by ``spec``."""
    module_name, _, cls_name = REGISTRY[cfg.kind].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise ConfigError(f"fleet.kind = {cfg.kind.value!r}: not available in this version "
                          f"(available: serial)") from None
    fleet: Fleet = getattr(module, cls_name)(spec, cfg)
    return fleet


__all__ = ["AggregationMode", "ClientSpec", "Fleet", "FleetConfig", "FleetKind", "REGISTRY",
           "SerialFleet", "make_fleet"]
