"""FedNova (Wang et al., NeurIPS 2020): normalised averaging that removes the objective
inconsistency of clients taking different numbers of local steps.

Client i reports ``a_i``, the l1 norm of its local solver's step weights (``tau_i`` steps for plain
SGD; with momentum rho, ``(tau - rho (1 - rho^tau) / (1 - rho)) / (1 - rho)``). The server moves
``x <- x - tau_eff * sum_i p_i (x - x_i) / a_i`` with ``tau_eff = sum_i p_i a_i`` and ``p_i``
proportional to the clients' example counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedloom.algorithms.aggregate import weighted_mean
from fedloom.algorithms.base import Base, LocalSpec, ResultNeeds
from fedloom.algorithms.registry import AlgorithmContext, register
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientResult, Downlink, ServerState
from fedloom.core.validate import Problems


@dataclass(frozen=True, slots=True, kw_only=True)
class FedNovaOptions:
    server_lr: float = 1.0

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.server_lr > 0, "server_lr", self.server_lr, "must be > 0")
        p.raise_if_any()


def solver_norm(steps: int, momentum: float) -> float:
    """``||a_i||_1`` of local SGD with heavy-ball momentum after ``steps`` steps."""
    if momentum == 0:
        return float(steps)
    rho = momentum
    return (steps - rho * (1 - rho ** steps) / (1 - rho)) / (1 - rho)


def attach_solver_norm(result: ClientResult, downlink: Downlink) -> ClientResult:
    a = solver_norm(result.num_steps, downlink.config.momentum)
    extras = {**result.extras, "fednova_a": torch.tensor(a, dtype=torch.float64)}
    return dataclasses.replace(result, extras=extras)


class FedNova(Base):
    """Normalised averaging; plain SGD (with optional momentum) on the clients."""

    name = "fednova"
    local = LocalSpec(finish=attach_solver_norm)

    def __init__(self, options: FedNovaOptions | None = None) -> None:
        self.options = options or FedNovaOptions()

    def result_needs(self, layout: ParamLayout) -> ResultNeeds:
        """Each result carries its normalising factor ``a_i``."""
        return ResultNeeds(extras={"fednova_a": 1})

    def aggregate(self, round: int, state: ServerState,
                  results: Sequence[ClientResult]) -> ServerState:
        if not results:
            return ServerState(round=round, params=state.params)
        total = sum(r.num_examples for r in results)
        p = [r.num_examples / total for r in results]
        a = [float(r.extras["fednova_a"]) for r in results]
        tau_eff = sum(pi * ai for pi, ai in zip(p, a))
        w = [pi / ai for pi, ai in zip(p, a)]
        # x + tau_eff * sum_i w_i (x_i - x) = x + tau_eff * W * (mean_w(x_i) - x)
        step = tau_eff * sum(w) * self.options.server_lr
        mean = weighted_mean([r.params for r in results], w)
        return ServerState(round=round, params=torch.lerp(state.params, mean, step))


@register("fednova", FedNovaOptions)
def _build(options: FedNovaOptions, context: AlgorithmContext) -> FedNova:
    return FedNova(options)
