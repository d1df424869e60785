"""Asynchronous aggregation: FedAsync (Xie et al., 2019) and FedBuff (Nguyen et al., AISTATS 2022).

An async algorithm sees one client result at a time, with its staleness: how many server model
updates happened since the client received its model. It returns the new server state and
whether the global model changed (a new model version).

FedAsync mixes every result in: ``x <- (1 - a_t) x + a_t x_k`` with ``a_t = alpha * s(staleness)``,
``s`` constant, polynomial ``(staleness + 1)^(-a)`` or hinge ``1`` if ``staleness <= b`` else
``1 / (a (staleness - b) + 1)``.
FedBuff buffers ``buffer_size`` client deltas ``x_k - x_start`` (each scaled by
``s(staleness)``), then steps ``x <- x + server_lr * mean(buffer)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

import torch

from fedloom.algorithms.base import PLAIN, LocalSpec
from fedloom.core.packages import ClientConfig, ClientResult, Downlink, ServerState
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


@runtime_checkable
class AsyncAlgorithm(Protocol):
    name: str
    local: LocalSpec

    def init(self, params: torch.Tensor) -> ServerState: ...

    def configure(self, state: ServerState, client_id: int, client: ClientConfig) -> Downlink: ...

    def on_result(self, state: ServerState, result: ClientResult, start: torch.Tensor,
                  staleness: int) -> tuple[ServerState, bool]: ...


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


def _downlink(state: ServerState, client_id: int, client: ClientConfig) -> Downlink:
    return Downlink(round=state.round, client_id=client_id, params=state.params, config=client)


class FedAsync:
    name = "fedasync"
    local: LocalSpec = PLAIN

    def __init__(self, options: FedAsyncOptions | None = None) -> None:
        self.options = options or FedAsyncOptions()

    def init(self, params: torch.Tensor) -> ServerState:
        return ServerState(round=0, params=params.clone())

    def configure(self, state: ServerState, client_id: int, client: ClientConfig) -> Downlink:
        return _downlink(state, client_id, client)

    def on_result(self, state: ServerState, result: ClientResult, start: torch.Tensor,
                  staleness: int) -> tuple[ServerState, bool]:
        o = self.options
        mix = o.alpha * staleness_weight(o.staleness, staleness, o.a, o.b)
        params = torch.lerp(state.params, result.params, mix)
        return ServerState(round=state.round + 1, params=params), True


class FedBuff:
    name = "fedbuff"
    local: LocalSpec = PLAIN

    def __init__(self, options: FedBuffOptions | None = None) -> None:
        self.options = options or FedBuffOptions()
        self._buffer: list[torch.Tensor] = []

    def init(self, params: torch.Tensor) -> ServerState:
        self._buffer = []
        return ServerState(round=0, params=params.clone())

    def configure(self, state: ServerState, client_id: int, client: ClientConfig) -> Downlink:
        return _downlink(state, client_id, client)

    def on_result(self, state: ServerState, result: ClientResult, start: torch.Tensor,
                  staleness: int) -> tuple[ServerState, bool]:
        o = self.options
        weight = staleness_weight(o.staleness, staleness, o.a, o.b)
        self._buffer.append((result.params - start).mul_(weight))
        if len(self._buffer) < o.buffer_size:
            return state, False
        step = _mean(self._buffer)
        self._buffer = []
        return ServerState(round=state.round + 1,
                           params=state.params.add(step, alpha=o.server_lr)), True


def _mean(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    out = torch.zeros_like(tensors[0])
    for t in tensors:
        out.add_(t)
    return out.div_(len(tensors))
