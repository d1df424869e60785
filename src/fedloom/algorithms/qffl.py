"""q-FFL / q-FedAvg (Li, Sanjabi, Beirami, Smith, ICLR 2020): fair resource allocation.

Clients with higher loss get more weight. Client k reports ``F_k``, its loss at the received
model on all its training data, and trains as in FedAvg to ``w_k``. With ``L`` the Lipschitz
estimate (default ``1 / client.lr``)::

    dw_k = L (w - w_k)
    D_k  = F_k^q dw_k
    h_k  = q F_k^(q-1) ||dw_k||^2 + L F_k^q
    w   <- w - sum_k D_k / sum_k h_k

``q = 0`` is the unweighted mean of the local models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedloom.algorithms.aggregate import weighted_mean
from fedloom.algorithms.base import Base, LocalSpec, LocalView, ResultNeeds, broadcast
from fedloom.algorithms.registry import AlgorithmContext, register
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientConfig, ClientResult, Downlink, ServerState
from fedloom.core.validate import Problems


@dataclass(frozen=True, slots=True, kw_only=True)
class QFFLOptions:
    """``q``: fairness (0 = plain averaging); ``lipschitz``: L, or null for 1 / client.lr."""

    q: float = 1.0
    lipschitz: float | None = None

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.q >= 0, "q", self.q, "must be >= 0")
        p.check(self.lipschitz is None or self.lipschitz > 0, "lipschitz", self.lipschitz,
                "must be > 0 or null (1 / client.lr)")
        p.raise_if_any()


def qffl_weights(losses: Sequence[float], sq_norms: Sequence[float], q: float,
                 lipschitz: float) -> tuple[list[float], float]:
    """Per-client multipliers ``F_k^q`` of ``dw_k`` and the denominator ``sum_k h_k``."""
    f = [max(v, 1e-12) for v in losses]
    scale = [fk ** q for fk in f]
    h = sum(q * fk ** (q - 1) * n + lipschitz * s for fk, n, s in zip(f, sq_norms, scale))
    return scale, h


def start_loss(view: LocalView, _downlink: Downlink) -> tuple[dict[str, Mean],
                                                              dict[str, torch.Tensor]]:
    """``F_k``: the client's loss at the received model, before it trains."""
    return {"start_loss": view.loss()}, {}


class QFFL(Base):
    """q-FedAvg; evaluate with federated evaluation to see the fairness it buys."""

    name = "qffl"
    local = LocalSpec(before=start_loss)

    def __init__(self, options: QFFLOptions | None = None) -> None:
        self.options = options or QFFLOptions()
        # derived, not state: set from the round's client config before every aggregate
        self._lipschitz = self.options.lipschitz

    def result_needs(self, layout: ParamLayout) -> ResultNeeds:
        """Each result reports the loss at the global model (``start_loss``)."""
        return ResultNeeds(metrics=frozenset({"start_loss"}))

    def configure(self, round: int, state: ServerState, cohort: Sequence[int],
                  client: ClientConfig) -> list[Downlink]:
        if self.options.lipschitz is None:
            self._lipschitz = 1.0 / client.lr
        return broadcast(round, state, cohort, client)

    def aggregate(self, round: int, state: ServerState,
                  results: Sequence[ClientResult]) -> ServerState:
        if not results:
            return ServerState(round=round, params=state.params)
        lip = float(self._lipschitz or 1.0)
        dws = [(state.params - r.params).mul_(lip) for r in results]
        losses = [r.metrics["start_loss"].value for r in results]
        scale, h = qffl_weights(losses, [float(dw.double().square().sum()) for dw in dws],
                                self.options.q, lip)
        # sum_k D_k / h = (sum_k scale_k) / h * weighted_mean(dw_k, scale_k)
        step = weighted_mean(dws, scale).mul_(sum(scale) / h)
        return ServerState(round=round, params=state.params - step)


@register("qffl", QFFLOptions)
def _build(options: QFFLOptions, context: AlgorithmContext) -> QFFL:
    return QFFL(options)
