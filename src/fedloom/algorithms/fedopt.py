"""Server-side optimisers on the pseudo-gradient: FedAvgM, FedAdam, FedYogi, FedAdagrad.

Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), Algorithm 2, and Hsu et al. (2019)
for server momentum. With ``delta = average - global`` (the negative pseudo-gradient)::

    m = beta1 * m + (1 - beta1) * delta
    v = v + delta**2                                            (adagrad)
    v = beta2 * v + (1 - beta2) * delta**2                      (adam)
    v = v - (1 - beta2) * delta**2 * sign(v - delta**2)         (yogi)
    global = global + server_lr * m / (sqrt(v) + tau)

with ``v`` starting at ``tau**2`` and no bias correction, as in the paper. FedAvgM is SGD with
momentum on the same pseudo-gradient: ``v = momentum * v + delta; global = global + server_lr * v``
(``momentum`` 0 and ``server_lr`` 1 give FedAvg exactly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch

from fedloom.algorithms.aggregate import example_weighted_params
from fedloom.algorithms.base import Base
from fedloom.algorithms.registry import AlgorithmContext, register
from fedloom.core.packages import ClientResult, ServerState
from fedloom.core.validate import Problems


class ServerOptimizer(StrEnum):
    MOMENTUM = "momentum"
    ADAGRAD = "adagrad"
    ADAM = "adam"
    YOGI = "yogi"


@dataclass(frozen=True, slots=True, kw_only=True)
class FedOptOptions:
    """Options of FedAdam / FedYogi / FedAdagrad (defaults: Reddi et al.'s common choices)."""

    server_lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.server_lr > 0, "server_lr", self.server_lr, "must be > 0")
        p.check(0 <= self.beta1 < 1, "beta1", self.beta1, "must be in [0, 1)")
        p.check(0 <= self.beta2 < 1, "beta2", self.beta2, "must be in [0, 1)")
        p.check(self.tau > 0, "tau", self.tau, "must be > 0")
        p.raise_if_any()


@dataclass(frozen=True, slots=True, kw_only=True)
class FedAvgMOptions:
    """FedAvgM: server learning rate and server momentum (Hsu et al. 2019)."""

    server_lr: float = 1.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.server_lr > 0, "server_lr", self.server_lr, "must be > 0")
        p.check(0 <= self.momentum < 1, "momentum", self.momentum, "must be in [0, 1)")
        p.raise_if_any()


class FedOpt(Base):
    """FedAvg's client half with an optimiser on the server (``kind`` picks which)."""

    reducible = True  # the step reads the results only through their example-weighted mean

    def __init__(self, kind: ServerOptimizer, options: FedOptOptions | FedAvgMOptions) -> None:
        self.kind = kind
        self.options = options
        self.name = "fedavgm" if kind == ServerOptimizer.MOMENTUM else f"fed{kind.value}"

    def init_extras(self, params: torch.Tensor) -> dict[str, torch.Tensor]:
        extras = {"m": torch.zeros_like(params)}
        if isinstance(self.options, FedOptOptions):
            extras["v"] = torch.full_like(params, self.options.tau ** 2)
        return extras

    def aggregate(self, round: int, state: ServerState,
                  results: Sequence[ClientResult]) -> ServerState:
        if not results:
            return ServerState(round=round, params=state.params, extras=state.extras)
        return self.step(round, state, example_weighted_params(results))

    def step(self, round: int, state: ServerState, mean: torch.Tensor) -> ServerState:
        """The server optimiser's step from the example-weighted mean of the local models."""
        delta = mean.sub(state.params)
        opts = self.options
        if isinstance(opts, FedAvgMOptions):
            m = state.extras["m"].mul(opts.momentum).add_(delta)
            params = state.params.add(m, alpha=opts.server_lr)
            return ServerState(round=round, params=params, extras={"m": m})
        m = state.extras["m"].mul(opts.beta1).add_(delta, alpha=1 - opts.beta1)
        sq = delta.square()
        v = state.extras["v"]
        if self.kind == ServerOptimizer.ADAGRAD:
            v = v.add(sq)
        elif self.kind == ServerOptimizer.ADAM:
            v = v.mul(opts.beta2).add_(sq, alpha=1 - opts.beta2)
        else:
            v = v.sub((v - sq).sign_().mul_(sq), alpha=1 - opts.beta2)
        params = state.params.addcdiv(m, v.sqrt().add_(opts.tau), value=opts.server_lr)
        return ServerState(round=round, params=params, extras={"m": m, "v": v})


def fedavgm(options: FedAvgMOptions) -> FedOpt:
    return FedOpt(ServerOptimizer.MOMENTUM, options)


def fedadam(options: FedOptOptions) -> FedOpt:
    return FedOpt(ServerOptimizer.ADAM, options)


def fedyogi(options: FedOptOptions) -> FedOpt:
    return FedOpt(ServerOptimizer.YOGI, options)


def fedadagrad(options: FedOptOptions) -> FedOpt:
    return FedOpt(ServerOptimizer.ADAGRAD, options)


def _from_options(make: Callable[[Any], FedOpt]) -> Callable[[Any, AlgorithmContext], FedOpt]:
    def build(options: Any, context: AlgorithmContext) -> FedOpt:
        return make(options)

    return build


for _name, _options, _make in (("fedavgm", FedAvgMOptions, fedavgm),
                               ("fedadam", FedOptOptions, fedadam),
                               ("fedyogi", FedOptOptions, fedyogi),
                               ("fedadagrad", FedOptOptions, fedadagrad)):
    register(_name, _options)(_from_options(_make))
