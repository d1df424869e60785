"""FedAvg on quadratic clients converges to the closed-form fixed point (BENCHMARKS.md)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedloom import ClientConfig, FedAvg, Simulation
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


class PerClientSteps(FedAvg):
    """FedAvg where client i takes taus[i] full-batch gradient steps."""

    def __init__(self, taus: Sequence[int]) -> None:
        super().__init__()
        self.taus = taus

    def configure(self, round: int, state: ServerState, cohort: Sequence[int],
                  client: ClientConfig) -> list[Downlink]:
        return [Downlink(round=round, client_id=c, params=state.params,
                         config=ClientConfig(steps=self.taus[c], batch_size=0, lr=client.lr))
                for c in cohort]


def quadratic_data(counts: Sequence[int]) -> FederatedData:
    dim = len(counts)
    rows = torch.cat([torch.eye(dim)[i].expand(n, dim) for i, n in enumerate(counts)])
    bounds = torch.tensor((0, *counts)).cumsum(0).tolist()
    clients = tuple(torch.arange(bounds[i], bounds[i + 1]) for i in range(dim))
    arrays = ArrayData(x=rows.contiguous(), y=torch.zeros(len(rows), dtype=torch.long))
    return FederatedData(name="quadratic", train=arrays, test=arrays, client_train=clients,
                         client_test=None, num_classes=2, input_shape=(dim,))


def test_fedavg_reaches_closed_form_fixed_point() -> None:
    counts, taus, eta = [3, 1, 2, 5], [1, 2, 5, 10], 0.1
    data = quadratic_data(counts)
    sim = Simulation(data=data, model_fn=lambda: Point(len(counts)),
                     algorithm=PerClientSteps(taus), client=ClientConfig(lr=eta), rounds=300,
                     cohort_size=len(counts), loss_fn=half_squared, eval_every=1000, threads=1)
    sim.state = ServerState(round=0, params=torch.zeros(len(counts)))
    final = sim.run().final.params.double()
    a = torch.tensor([1 - (1 - eta) ** t for t in taus], dtype=torch.float64)
    p = torch.tensor(counts, dtype=torch.float64)
    expected = p * a / (p * a).sum()  # sum_i p_i a_i e_i / sum_i p_i a_i
    assert torch.allclose(final, expected, atol=1e-6, rtol=0)
    # and it is not the true optimum sum_i p_i e_i: FedAvg's known bias with unequal steps
    assert not torch.allclose(final, p / p.sum(), atol=1e-3)
