"""Fleets: where a round's clients run (``fleet.kind``), resolved in one place."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fedloom.core.errors import ConfigError
from fedloom.fleets.base import Fleet
from fedloom.fleets.config import AggregationMode, FleetConfig, FleetKind
from fedloom.fleets.serial import SerialFleet
from fedloom.training.spec import ClientSpec

if TYPE_CHECKING:
    from fedloom.fleets.blazefl import ClientContext, ClientRunner
    from fedloom.fleets.blazefl_contract import ParallelClientTrainer, SerialClientTrainer
    from fedloom.fleets.blazefl_support import (
        BaseServerHandler,
        FilteredDataset,
        ModelSelector,
        PartitionedDataset,
        RNGSuite,
        ServerHandler,
        create_rng_suite,
        deserialize_model,
        seed_everything,
        serialize_model,
        setup_reproducibility,
    )
    from fedloom.fleets.blazefl_v2 import (
        BaseClientTrainer,
        IPCMode,
        ProcessPoolClientTrainer,
        SHMHandle,
        ThreadPoolClientTrainer,
    )

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


#: BlazeFL's names (1.x and 2.x) and fedloom's in-memory form, imported on first use
_BLAZEFL = {
    "ClientRunner": "blazefl", "ClientContext": "blazefl",
    "SerialClientTrainer": "blazefl_contract", "ParallelClientTrainer": "blazefl_contract",
    "BaseClientTrainer": "blazefl_v2", "ProcessPoolClientTrainer": "blazefl_v2",
    "ThreadPoolClientTrainer": "blazefl_v2", "IPCMode": "blazefl_v2", "SHMHandle": "blazefl_v2",
    **dict.fromkeys(["BaseServerHandler", "ServerHandler", "ModelSelector", "PartitionedDataset",
                     "FilteredDataset", "serialize_model", "deserialize_model", "RNGSuite",
                     "create_rng_suite", "setup_reproducibility", "seed_everything"],
                    "blazefl_support"),
}


def __getattr__(name: str) -> object:
    if name not in _BLAZEFL:
        raise AttributeError(f"module 'fedloom.fleets' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fedloom.fleets.{_BLAZEFL[name]}"), name)


__all__ = ["AggregationMode", "ClientSpec", "Fleet", "FleetConfig", "FleetKind", "REGISTRY",
           "SerialFleet", "make_fleet",
           # BlazeFL's names (imported on first use)
           "ClientRunner", "ClientContext", "SerialClientTrainer", "ParallelClientTrainer",
           "BaseClientTrainer", "ProcessPoolClientTrainer", "ThreadPoolClientTrainer", "IPCMode",
           "SHMHandle", "BaseServerHandler", "ServerHandler", "ModelSelector",
           "PartitionedDataset", "FilteredDataset", "serialize_model", "deserialize_model",
           "RNGSuite", "create_rng_suite", "setup_reproducibility", "seed_everything"]
