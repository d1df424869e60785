"""FedProx (Li et al., MLSys 2020): FedAvg with a proximal term ``mu/2 ||w - w_global||^2``.

The term is applied as its gradient, ``mu (w - w_global)``, added in place after each backward.
FedProx keeps the partial work of stragglers (``client.straggler_fraction``): they run fewer
epochs instead of being dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from fedloom.algorithms.aggregate import mean_step
from fedloom.algorithms.base import Base, LocalSpec, proximal_pull
from fedloom.algorithms.registry import AlgorithmContext, register
from fedloom.core.packages import ClientResult, ServerState
from fedloom.core.validate import Problems


@dataclass(frozen=True, slots=True, kw_only=True)
class FedProxOptions:
    """``mu``: weight of the proximal term (0 = FedAvg's local objective)."""

    mu: float = 0.01
    server_lr: float = 1.0

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.mu >= 0, "mu", self.mu, "must be >= 0")
        p.check(self.server_lr > 0, "server_lr", self.server_lr, "must be > 0")
        p.raise_if_any()


class FedProx(Base):
    """FedAvg's server step with the proximal client objective."""

    name = "fedprox"
    reducible = True
    keeps_partial_work = True

    def __init__(self, options: FedProxOptions | None = None) -> None:
        self.options = options or FedProxOptions()
        self.mu = self.options.mu
        self.local = LocalSpec(correct_grads=partial(proximal_pull, self.mu))

    def aggregate(self, round: int, state: ServerState,
                  results: Sequence[ClientResult]) -> ServerState:
        return mean_step(round, state, results, self.options.server_lr)


@register("fedprox", FedProxOptions)
def _build(options: FedProxOptions, context: AlgorithmContext) -> FedProx:
    return FedProx(options)
