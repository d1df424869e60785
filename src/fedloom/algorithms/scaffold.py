"""SCAFFOLD (Karimireddy et al., ICML 2020): control variates correct client drift.

Clients step with ``grad + c - c_i``. Afterwards (option II, default)
``c_i+ = c_i - c + (x - y_i) / (K lr)``; option I uses ``c_i+ = grad f_i(x)`` on all local data.
The server moves ``x`` toward the example-weighted mean of the ``y_i`` (``server_lr``) and keeps
``c = sum_i p_i c_i`` over all clients by adding ``p_i (c_i+ - c_i)`` for the cohort, with
``p_i`` the clients' shares of all training examples. ``c_i`` lives in the client-state store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch

from fedloom.algorithms.aggregate import example_weighted_params
from fedloom.algorithms.base import Base, LocalSpec, LocalView, ResultNeeds
from fedloom.algorithms.client_store import ClientStateStore, MemoryStore
from fedloom.algorithms.registry import AlgorithmContext, register
from fedloom.core.counts import ExampleShares
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientConfig, ClientResult, Downlink, ServerState
from fedloom.core.validate import Problems


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaffoldOptions:
    """``option``: the control-variate update of the paper, 1 or 2."""

    server_lr: float = 1.0
    option: int = 2

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.server_lr > 0, "server_lr", self.server_lr, "must be > 0")
        p.check(self.option in (1, 2), "option", self.option, "must be 1 or 2")
        p.raise_if_any()


def control_correction(grads: torch.Tensor, _params: torch.Tensor, downlink: Downlink) -> None:
    grads.add_(downlink.extras["correction"][: grads.shape[0]])


def start_gradient(view: LocalView, _downlink: Downlink) -> tuple[dict[str, Mean],
                                                                 dict[str, torch.Tensor]]:
    """Option I's new control variate: the full local gradient at the received model."""
    return {}, {"start_grad": view.gradient()}


def new_control_variate(option: int, result: ClientResult, downlink: Downlink) -> ClientResult:
    extras = dict(result.extras)
    if option == 1:
        c_i = extras.pop("start_grad")
    else:  # c_i - c + (x - y) / (K lr), with c_i - c = -correction
        n = downlink.extras["correction"].shape[0]
        steps_lr = max(result.num_steps, 1) * downlink.config.lr
        c_i = (downlink.params[:n] - result.params[:n]).div_(steps_lr)
        c_i.sub_(downlink.extras["correction"])
    extras["c_i"] = c_i
    return dataclasses.replace(result, extras=extras)


class Scaffold(Base):
    """SCAFFOLD with per-client control variates in a :class:`ClientStateStore`.

    Args:
        num_examples: every registered client's example count (``p_i`` of the global ``c``).
        num_trainable: values of the trainable tensors (the control variates' length).
    """

    name = "scaffold"

    def __init__(self, options: ScaffoldOptions | None = None, *, num_examples: Sequence[int],
                 num_trainable: int | None = None, store: ClientStateStore | None = None) -> None:
        self.options = options or ScaffoldOptions()
        self.share = ExampleShares(num_examples)  # p_i on demand: nothing per client
        self.num_trainable = num_trainable
        self.store: ClientStateStore = store or MemoryStore()
        self.local = LocalSpec(before=start_gradient if self.options.option == 1 else None,
                               correct_grads=control_correction,
                               finish=partial(new_control_variate, self.options.option))

    def result_needs(self, layout: ParamLayout) -> ResultNeeds:
        """Each result carries its new control variate ``c_i``."""
        return ResultNeeds(extras={"c_i": self.num_trainable or layout.size})

    def init_extras(self, params: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"c": torch.zeros_like(params[: self.num_trainable])}

    def configure(self, round: int, state: ServerState, cohort: Sequence[int],
                  client: ClientConfig) -> list[Downlink]:
        c = state.extras["c"]
        tasks = []
        for cid in cohort:
            c_i = self.store.get(cid, "c")
            correction = c if c_i is None else c - c_i
            tasks.append(Downlink(round=round, client_id=cid, params=state.params, config=client,
                                  extras={"correction": correction}))
        return tasks

    def aggregate(self, round: int, state: ServerState,
                  results: Sequence[ClientResult]) -> ServerState:
        c = state.extras["c"].clone()
        for r in results:
            old = self.store.get(r.client_id, "c")
            new = r.extras["c_i"]
            c.add_(new if old is None else new - old, alpha=self.share[r.client_id])
            self.store.put(r.client_id, "c", new)
        if not results:
            return ServerState(round=round, params=state.params, extras={"c": c})
        params = torch.lerp(state.params, example_weighted_params(results),
                            self.options.server_lr)
        return ServerState(round=round, params=params, extras={"c": c})


@register("scaffold", ScaffoldOptions)
def _build(options: ScaffoldOptions, context: AlgorithmContext) -> Scaffold:
    return Scaffold(options, num_examples=context.num_examples,
                    num_trainable=context.trainable, store=context.store)
