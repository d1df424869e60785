"""Federated algorithms, chosen by registry name (``algorithm.name``) or passed as objects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedloom.algorithms.base import PLAIN, Algorithm, LocalSpec
from fedloom.algorithms.fedavg import FedAvg, FedAvgOptions

#: name -> (options dataclass, constructor from options)
REGISTRY: dict[str, tuple[type[Any], Callable[[Any], Algorithm]]] = {
    "fedavg": (FedAvgOptions, FedAvg),
}


def build_algorithm(name: str, options: object) -> Algorithm:
    _, make = REGISTRY[name]
    return make(options)


__all__ = ["PLAIN", "REGISTRY", "Algorithm", "FedAvg", "FedAvgOptions", "LocalSpec",
           "build_algorithm"]
