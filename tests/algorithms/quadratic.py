"""Quadratic clients ``1/2 ||x - e_i||^2`` for closed-form tests (BENCHMARKS.md)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedloom import ClientConfig, Simulation
from fedloom.algorithms.base import Algorithm, Base
from fedloom.core.packages import Downlink, ServerState
from fedloom.data.dataset import ArrayData, FederatedData


class Point(nn.Module):
    """The model is a point w; its 'output' on target e is w - e."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.w - e


def half_squared(out: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out ** 2).sum(1).mean()


def quadratic_data(counts: Sequence[int]) -> FederatedData:
    """Client i holds counts[i] copies of e_i, so p_i is proportional to counts[i]."""
    dim = len(counts)
    rows = torch.cat([torch.eye(dim)[i].expand(n, dim) for i, n in enumerate(counts)])
    bounds = torch.tensor((0, *counts)).cumsum(0).tolist()
    clients = tuple(torch.arange(bounds[i], bounds[i + 1]) for i in range(dim))
    arrays = ArrayData(x=rows.contiguous(), y=torch.zeros(len(rows), dtype=torch.long))
    return FederatedData(name="quadratic", train=arrays, test=arrays, client_train=clients,
                         client_test=None, num_classes=2, input_shape=(dim,))


class PerClientSteps(Base):
    """Wraps an algorithm so client i takes taus[i] full-batch gradient steps."""

    def __init__(self, inner: Algorithm, taus: Sequence[int]) -> None:
        self.inner = inner
        self.taus = taus
        self.name = inner.name
        self.local = inner.local

    def init(self, params: torch.Tensor) -> ServerState:
        return self.inner.init(params)

    def configure(self, round: int, state: ServerState, cohort: Sequence[int],
                  client: ClientConfig) -> list[Downlink]:
        tasks = self.inner.configure(round, state, cohort, client)
        return [Downlink(round=t.round, client_id=t.client_id, params=t.params, extras=t.extras,
                         config=ClientConfig(steps=self.taus[t.client_id], batch_size=0,
                                             lr=client.lr))
                for t in tasks]

    def aggregate(self, round: int, state: ServerState, results: Sequence[object]) -> ServerState:
        return self.inner.aggregate(round, state, results)  # type: ignore[arg-type]


def run_quadratic(algorithm: Algorithm, counts: Sequence[int], taus: Sequence[int], eta: float,
                  rounds: int) -> torch.Tensor:
    data = quadratic_data(counts)
    sim = Simulation(data=data, model_fn=lambda: Point(len(counts)),
                     algorithm=PerClientSteps(algorithm, taus), client=ClientConfig(lr=eta),
                     rounds=rounds, cohort_size=len(counts), loss_fn=half_squared,
                     eval_every=10 ** 6, threads=1)
    sim.state = sim.algorithm.init(torch.zeros(len(counts)))
    return sim.run().final.params.double()
