"""FedAvg (McMahan et al., 2017): average local models weighted by their example counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedloom.algorithms.aggregate import mean_step
from fedloom.algorithms.base import Base
from fedloom.algorithms.registry import AlgorithmContext, register
from fedloom.core.packages import ClientResult, ServerState
from fedloom.core.validate import Problems


@dataclass(frozen=True, slots=True, kw_only=True)
class FedAvgOptions:
    """``server_lr`` scales the step from the global model towards the average (1 = FedAvg)."""

    server_lr: float = 1.0

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.server_lr > 0, "server_lr", self.server_lr, "must be > 0")
        p.raise_if_any()


class FedAvg(Base):
    """Federated averaging: plain local SGD, the example-weighted mean of the local models."""

    name = "fedavg"
    reducible = True

    def __init__(self, options: FedAvgOptions | None = None) -> None:
        self.options = options or FedAvgOptions()

    def aggregate(self, round: int, state: ServerState,
                  results: Sequence[ClientResult]) -> ServerState:
        return mean_step(round, state, results, self.options.server_lr)


@register("fedavg", FedAvgOptions)
def _build(options: FedAvgOptions, context: AlgorithmContext) -> FedAvg:
    return FedAvg(options)
