"""Algorithms by registry name (``algorithm.name``): each module registers its own.

An algorithm lives in one file: its options dataclass (the keys beside ``name`` in the run
config's ``algorithm`` section), the algorithm, and a factory registered with :func:`register`,
which also receives the run's :class:`AlgorithmContext`. :func:`registry` imports every module of
this package once, so a new algorithm needs no edit anywhere else.

Example:
    >>> sorted(registry())[:3]
    ['ditto', 'fedadagrad', 'fedadam']
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedloom.algorithms.base import Algorithm
from fedloom.algorithms.client_store import ClientStateStore, MemoryStore
from fedloom.core.errors import ConfigError
from fedloom.core.layout import ParamLayout


@dataclass(frozen=True, slots=True, kw_only=True)
class AlgorithmContext:
    """What a run knows about its clients and model when it builds the algorithm.

    Attributes:
        num_examples: every registered client's example count.
        layout: the model's layout (None: unknown to the caller).
        num_trainable: values of the trainable tensors (default: the layout's).
        store: where per-client state lives between rounds.
    """

    num_examples: Sequence[int]
    layout: ParamLayout | None = None
    num_trainable: int | None = None
    store: ClientStateStore = field(default_factory=MemoryStore)

    @property
    def trainable(self) -> int | None:
        if self.num_trainable is not None:
            return self.num_trainable
        return None if self.layout is None else self.layout.num_trainable

    def require_layout(self, who: str) -> ParamLayout:
        if self.layout is None:
            raise ConfigError(f"algorithm {who!r} needs the model's layout in its "
                              "AlgorithmContext (layout=ParamLayout.from_module(model))")
        return self.layout


Factory = Callable[[Any, AlgorithmContext], Algorithm]


@dataclass(frozen=True, slots=True, kw_only=True)
class AlgorithmConfig:
    """An ``algorithm`` section: ``name`` picks a registered algorithm; its own options sit
    beside it in the YAML (``options`` here, checked against the algorithm's dataclass)."""

    name: str = "fedavg"
    options: Any = None

    def build(self, context: AlgorithmContext) -> Algorithm:
        return build_algorithm(self.name, self.options, context)


@dataclass(frozen=True, slots=True)
class Registration:
    options: type[Any]
    factory: Factory


_REGISTERED: dict[str, Registration] = {}
_discovered = False


def register(name: str, options: type[Any]) -> Callable[[Factory], Factory]:
    """Register ``factory(options, context)`` under ``name`` with its options dataclass."""

    def decorate(factory: Factory) -> Factory:
        _REGISTERED[name] = Registration(options, factory)
        return factory

    return decorate


def registry() -> Mapping[str, Registration]:
    """Every registered algorithm by name (the package's modules are imported on first use)."""
    global _discovered
    if not _discovered:
        package = importlib.import_module("fedloom.algorithms")
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"fedloom.algorithms.{module.name}")
        _discovered = True
    return _REGISTERED


def build_algorithm(name: str, options: object, context: AlgorithmContext) -> Algorithm:
    """The registered algorithm ``name`` built from its options for this run."""
    known = registry()
    if name not in known:
        raise ConfigError(f"algorithm.name = {name!r}: must be one of {', '.join(sorted(known))}")
    return known[name].factory(options, context)
