"""FedAvg (McMahan et al., 2017): average local models weighted by their example counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedloom.algorithms.base import PLAIN, LocalSpec, broadcast, step_from_mean
from fedloom.core.packages import ClientConfig, ClientResult, Downlink, ServerState
from fedloom.core.validate import Problems


@dataclass(frozen=True, slots=True, kw_only=True)
class FedAvgOptions:
    """``server_lr`` scales the step from the global model towards the average (1 = FedAvg)."""

    server_lr: float = 1.0

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.server_lr > 0, "server_lr", self.server_lr, "must be > 0")
        p.raise_if_any()


class FedAvg:
    """Federated averaging.

    Example:
        >>> algo = FedAvg()
        >>> state = algo.init(torch.zeros(3))
        >>> state.round
        0
    """

    name = "fedavg"
    local: LocalSpec = PLAIN
    reducible = True  # the aggregate is a function of the example-weighted mean

    def __init__(self, options: FedAvgOptions | None = None) -> None:
        self.options = options or FedAvgOptions()

    def init(self, params: torch.Tensor) -> ServerState:
        return ServerState(round=0, params=params.clone())

    def configure(self, round: int, state: ServerState, cohort: Sequence[int],
                  client: ClientConfig) -> list[Downlink]:
        return broadcast(round, state, cohort, client)

    def aggregate(self, round: int, state: ServerState,
                  results: Sequence[ClientResult]) -> ServerState:
        return step_from_mean(self, round, state, results)

    def aggregate_mean(self, round: int, state: ServerState, mean: torch.Tensor) -> ServerState:
        """The step from the example-weighted mean of the local models (a reduce's result)."""
        lr = self.options.server_lr
        params = mean if lr == 1.0 else torch.lerp(state.params, mean, lr)
        return ServerState(round=round, params=params, extras=state.extras)
