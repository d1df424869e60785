"""Asynchronous aggregation: FedAsync (Xie et al., 2019) and FedBuff (Nguyen et al., AISTATS 2022).

An async algorithm sees one client result at a time, with its staleness: how many server model
updates happened since the client received its model. It returns the new server state and
whether the global model changed (a new model version).

FedAsync mixes every result in: ``x <- (1 - a_t) x + a_t x_k`` with ``a_t = alpha * s(staleness)``,
``s`` constant, polynomial ``(staleness + 1)^(-a)`` or hinge ``1`` if ``staleness <= b`` else
``1 / (a (staleness - b) + 1)``.
FedBuff buffers ``buffer_size`` client deltas ``x_k - x_start`` (each scaled by
``s(staleness)``), then steps ``x <- x + server_lr * mean(buffer)``. The buffer is server state
(``extras["buffer"]``, the running sum, and ``extras["buffered"]``, the count), so a checkpoint
carries it.

Both are :class:`~fedloom.algorithms.base.AsyncAlgorithm` s: the async loop asks ``configure``
for one client at a time and gives every result to ``on_result``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import torch

from fedloom.algorithms.base import Base
from fedloom.algorithms.registry import AlgorithmContext, register
from fedloom.core.packages import ClientResult, ServerState
from fedloom.core.validate import Problems


class Staleness(StrEnum):
    CONSTANT = "constant"
    POLYNOMIAL = "polynomial"
    HINGE = "hinge"


def staleness_weight(kind: Staleness, staleness: int, a: float, b: float) -> float:
    """Xie et al.'s staleness functions s(t - tau)."""
    if kind == Staleness.POLYNOMIAL:
        return float((staleness + 1) ** (-a))
    if kind == Staleness.HINGE:
        return 1.0 if staleness <= b else 1.0 / (a * (staleness - b) + 1.0)
    return 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FedAsyncOptions:
    alpha: float = 0.6
    staleness: Staleness = Staleness.POLYNOMIAL
    a: float = 0.5
    b: float = 4.0

    def __post_init__(self) -> None:
        p = Problems()
        p.check(0 < self.alpha <= 1, "alpha", self.alpha, "must be in (0, 1]")
        p.check(self.a >= 0, "a", self.a, "must be >= 0")
        p.check(self.b >= 0, "b", self.b, "must be >= 0")
        p.raise_if_any()


@dataclass(frozen=True, slots=True, kw_only=True)
class FedBuffOptions:
    buffer_size: int = 10
    server_lr: float = 1.0
    staleness: Staleness = Staleness.POLYNOMIAL
    a: float = 0.5
    b: float = 4.0

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.buffer_size >= 1, "buffer_size", self.buffer_size, "must be >= 1")
        p.check(self.server_lr > 0, "server_lr", self.server_lr, "must be > 0")
        p.check(self.a >= 0, "a", self.a, "must be >= 0")
        p.check(self.b >= 0, "b", self.b, "must be >= 0")
        p.raise_if_any()


class _Async(Base):
    """What FedAsync and FedBuff share: no rounds to aggregate."""

    asynchronous = True

    def aggregate(self, round: int, state: ServerState,
                  results: Sequence[ClientResult]) -> ServerState:
        raise TypeError(f"{self.name} is asynchronous: its results go to on_result, one at a "
                        "time (the async loop), not to aggregate")


class FedAsync(_Async):
    name = "fedasync"

    def __init__(self, options: FedAsyncOptions | None = None) -> None:
        self.options = options or FedAsyncOptions()

    def on_result(self, state: ServerState, result: ClientResult, start: torch.Tensor,
                  staleness: int) -> tuple[ServerState, bool]:
        o = self.options
        mix = o.alpha * staleness_weight(o.staleness, staleness, o.a, o.b)
        params = torch.lerp(state.params, result.params, mix)
        return ServerState(round=state.round + 1, params=params), True


class FedBuff(_Async):
    name = "fedbuff"

    def __init__(self, options: FedBuffOptions | None = None) -> None:
        self.options = options or FedBuffOptions()

    def init_extras(self, params: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"buffer": torch.zeros_like(params), "buffered": torch.zeros((), dtype=torch.int64)}

    def on_result(self, state: ServerState, result: ClientResult, start: torch.Tensor,
                  staleness: int) -> tuple[ServerState, bool]:
        o = self.options
        weight = staleness_weight(o.staleness, staleness, o.a, o.b)
        buffer = state.extras["buffer"].add((result.params - start).mul_(weight))
        count = int(state.extras["buffered"]) + 1
        if count < o.buffer_size:
            return ServerState(round=state.round, params=state.params, extras={
                "buffer": buffer, "buffered": torch.tensor(count)}), False
        params = state.params.add(buffer.div_(count), alpha=o.server_lr)
        return ServerState(round=state.round + 1, params=params,
                           extras=self.init_extras(params)), True


@register("fedasync", FedAsyncOptions)
def _build_fedasync(options: FedAsyncOptions, context: AlgorithmContext) -> FedAsync:
    return FedAsync(options)


@register("fedbuff", FedBuffOptions)
def _build_fedbuff(options: FedBuffOptions, context: AlgorithmContext) -> FedBuff:
    return FedBuff(options)
