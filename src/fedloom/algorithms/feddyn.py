"""FedDyn (Acar et al., ICLR 2021): dynamic regularisation aligns local and global optima.

Client i minimises ``L_i(w) - <h_i, w> + alpha/2 ||w - w_global||^2`` (applied as the gradient
``g - h_i + alpha (w - w_global)``), then ``h_i <- h_i - alpha (w_i - w_global)``. The server keeps
``h <- h - alpha sum_i p_i (w_i - w_global)`` over the cohort and sets
``w_global = mean_p(w_i) - h / alpha``; ``p_i`` are the clients' shares of all training examples
(the paper's uniform ``1/m`` when clients hold equal data). ``h_i`` lives in the client-state store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch

from fedloom.algorithms.aggregate import example_weighted_params
from fedloom.algorithms.base import Base, LocalSpec, ResultNeeds
from fedloom.algorithms.client_store import ClientStateStore, MemoryStore
from fedloom.algorithms.registry import AlgorithmContext, register
from fedloom.core.counts import ExampleShares
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientConfig, ClientResult, Downlink, ServerState
from fedloom.core.validate import Problems


@dataclass(frozen=True, slots=True, kw_only=True)
class FedDynOptions:
    alpha: float = 0.01

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.alpha > 0, "alpha", self.alpha, "must be > 0")
        p.raise_if_any()


def dynamic_gradient(alpha: float, grads: torch.Tensor, params: torch.Tensor,
                     downlink: Downlink) -> None:
    grads.add_(params - downlink.params[: params.shape[0]], alpha=alpha)
    grads.sub_(downlink.extras["h_i"])


def update_linear_term(alpha: float, result: ClientResult, downlink: Downlink) -> ClientResult:
    h_i = downlink.extras["h_i"]
    n = h_i.shape[0]
    new = h_i - alpha * (result.params[:n] - downlink.params[:n])
    return dataclasses.replace(result, extras={**result.extras, "h_i": new})


class FedDyn(Base):
    """FedDyn with per-client linear terms in a :class:`ClientStateStore`."""

    name = "feddyn"

    def __init__(self, options: FedDynOptions | None = None, *, num_examples: Sequence[int],
                 num_trainable: int | None = None, store: ClientStateStore | None = None) -> None:
        self.options = options or FedDynOptions()
        self.share = ExampleShares(num_examples)  # p_i on demand: nothing per client
        self.num_trainable = num_trainable
        self.store: ClientStateStore = store or MemoryStore()
        alpha = self.options.alpha
        self.local = LocalSpec(correct_grads=partial(dynamic_gradient, alpha),
                               finish=partial(update_linear_term, alpha))

    def result_needs(self, layout: ParamLayout) -> ResultNeeds:
        """Each result carries its new ``h_i``."""
        return ResultNeeds(extras={"h_i": self.num_trainable or layout.size})

    def init_extras(self, params: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"h": torch.zeros_like(params[: self.num_trainable])}

    def configure(self, round: int, state: ServerState, cohort: Sequence[int],
                  client: ClientConfig) -> list[Downlink]:
        zeros = torch.zeros_like(state.extras["h"])
        return [Downlink(round=round, client_id=c, params=state.params, config=client,
                         extras={"h_i": self._h_i(c, zeros)}) for c in cohort]

    def _h_i(self, client_id: int, default: torch.Tensor) -> torch.Tensor:
        h_i = self.store.get(client_id, "h")
        return default if h_i is None else h_i

    def aggregate(self, round: int, state: ServerState,
                  results: Sequence[ClientResult]) -> ServerState:
        if not results:
            return ServerState(round=round, params=state.params, extras=state.extras)
        alpha = self.options.alpha
        h = state.extras["h"].clone()
        n = h.shape[0]
        for r in results:
            h.add_(r.params[:n] - state.params[:n], alpha=-alpha * self.share[r.client_id])
            self.store.put(r.client_id, "h", r.extras["h_i"])
        params = example_weighted_params(results)
        params[:n].sub_(h, alpha=1 / alpha)
        return ServerState(round=round, params=params, extras={"h": h})


@register("feddyn", FedDynOptions)
def _build(options: FedDynOptions, context: AlgorithmContext) -> FedDyn:
    return FedDyn(options, num_examples=context.num_examples, num_trainable=context.trainable,
                  store=context.store)
