"""Federated algorithms, chosen by registry name (``algorithm.name``) or passed as objects.

Each algorithm has an options dataclass (its keys beside ``name`` in the ``algorithm`` section)
and a factory that also receives the run's :class:`AlgorithmContext` (what stateful algorithms
need to know about the clients).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedloom.algorithms.asynchronous import (
    AsyncAlgorithm,
    FedAsync,
    FedAsyncOptions,
    FedBuff,
    FedBuffOptions,
)
from fedloom.algorithms.base import PLAIN, Algorithm, LocalSpec
from fedloom.algorithms.client_store import ClientStateStore, DiskStore, MemoryStore
from fedloom.algorithms.ditto import Ditto, DittoOptions
from fedloom.algorithms.fedavg import FedAvg, FedAvgOptions
from fedloom.algorithms.feddyn import FedDyn, FedDynOptions
from fedloom.algorithms.fednova import FedNova, FedNovaOptions
from fedloom.algorithms.fedopt import (
    FedAvgMOptions,
    FedOpt,
    FedOptOptions,
    fedadagrad,
    fedadam,
    fedavgm,
    fedyogi,
)
from fedloom.algorithms.fedprox import FedProx, FedProxOptions
from fedloom.algorithms.qffl import QFFL, QFFLOptions
from fedloom.algorithms.scaffold import Scaffold, ScaffoldOptions


@dataclass(frozen=True, slots=True, kw_only=True)
class AlgorithmContext:
    """What a run knows about its clients when it builds the algorithm."""

    num_examples: Sequence[int]
    num_trainable: int | None = None
    store: ClientStateStore = field(default_factory=MemoryStore)


Factory = Callable[[Any, AlgorithmContext], Algorithm | AsyncAlgorithm]

#: name -> (options dataclass, factory(options, context))
REGISTRY: dict[str, tuple[type[Any], Factory]] = {
    "fedavg": (FedAvgOptions, lambda o, _: FedAvg(o)),
    "fedprox": (FedProxOptions, lambda o, _: FedProx(o)),
    "fednova": (FedNovaOptions, lambda o, _: FedNova(o)),
    "fedavgm": (FedAvgMOptions, lambda o, _: fedavgm(o)),
    "fedadam": (FedOptOptions, lambda o, _: fedadam(o)),
    "fedyogi": (FedOptOptions, lambda o, _: fedyogi(o)),
    "fedadagrad": (FedOptOptions, lambda o, _: fedadagrad(o)),
    "fedasync": (FedAsyncOptions, lambda o, _: FedAsync(o)),
    "fedbuff": (FedBuffOptions, lambda o, _: FedBuff(o)),
    "ditto": (DittoOptions, lambda o, c: Ditto(o, store=c.store)),
    "qffl": (QFFLOptions, lambda o, _: QFFL(o)),
    "scaffold": (ScaffoldOptions, lambda o, c: Scaffold(
        o, num_examples=c.num_examples, num_trainable=c.num_trainable, store=c.store)),
    "feddyn": (FedDynOptions, lambda o, c: FedDyn(
        o, num_examples=c.num_examples, num_trainable=c.num_trainable, store=c.store)),
}


def build_algorithm(name: str, options: object,
                    context: AlgorithmContext) -> Algorithm | AsyncAlgorithm:
    _, make = REGISTRY[name]
    return make(options, context)


__all__ = [
    "PLAIN", "REGISTRY", "Algorithm", "AsyncAlgorithm", "FedAsync", "FedAsyncOptions",
    "FedBuff", "FedBuffOptions", "AlgorithmContext", "ClientStateStore", "DiskStore",
    "Ditto", "DittoOptions",
    "FedAvg", "FedAvgMOptions", "FedAvgOptions", "FedDyn", "FedDynOptions", "FedNova",
    "FedNovaOptions", "FedOpt", "FedOptOptions", "FedProx", "FedProxOptions", "LocalSpec",
    "MemoryStore", "QFFL", "QFFLOptions", "Scaffold", "ScaffoldOptions", "build_algorithm",
]
