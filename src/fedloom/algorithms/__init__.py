"""Federated algorithms, chosen by registry name (``algorithm.name``) or passed as objects.

Every algorithm is one module of this package: its options dataclass (its keys beside ``name``
in the ``algorithm`` section), the algorithm (the :class:`~fedloom.algorithms.base.Algorithm`
contract, defaults from :class:`~fedloom.algorithms.base.Base`) and a factory registered with
:func:`~fedloom.algorithms.registry.register`. Import an algorithm from its module
(``fedloom.algorithms.fedper.FedPer``); the common ones are also here.
"""

from __future__ import annotations

from fedloom.algorithms.asynchronous import FedAsync, FedAsyncOptions, FedBuff, FedBuffOptions
from fedloom.algorithms.base import (
    PLAIN,
    Algorithm,
    AsyncAlgorithm,
    Base,
    ExtraPass,
    LocalSpec,
    LocalView,
    ResultNeeds,
    Selection,
    is_async,
)
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
from fedloom.algorithms.registry import AlgorithmContext, build_algorithm, register, registry
from fedloom.algorithms.scaffold import Scaffold, ScaffoldOptions

__all__ = [
    "PLAIN", "Algorithm", "AlgorithmContext", "AsyncAlgorithm", "Base", "ClientStateStore",
    "DiskStore", "Ditto", "DittoOptions", "ExtraPass", "FedAsync", "FedAsyncOptions", "FedAvg",
    "FedAvgMOptions", "FedAvgOptions", "FedBuff", "FedBuffOptions", "FedDyn", "FedDynOptions",
    "FedNova", "FedNovaOptions", "FedOpt", "FedOptOptions", "FedProx", "FedProxOptions",
    "LocalSpec", "LocalView", "MemoryStore", "QFFL", "QFFLOptions", "ResultNeeds", "Scaffold",
    "ScaffoldOptions", "Selection", "build_algorithm", "fedadagrad", "fedadam", "fedavgm",
    "fedyogi", "is_async", "register", "registry",
]
