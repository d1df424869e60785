"""Ditto (Li, Hu, Beirami, Smith, ICML 2021): fair and robust personalisation.

Each selected client makes FedAvg's local update of the global model ``w`` and, besides, trains
its own personal model ``v_k`` on ``F_k(v) + lam/2 ||v - w||^2`` (an :class:`ExtraPass` after
the main one). The server averages the global updates as FedAvg does and keeps every ``v_k`` in
the client-state store; a client never selected uses the global model. Evaluate with
``eval.federated: true`` to see both the global and the personalised accuracy on the clients'
local test data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch

from fedloom.algorithms.aggregate import mean_step
from fedloom.algorithms.base import Base, ExtraPass, LocalSpec, ResultNeeds, proximal_pull
from fedloom.algorithms.client_store import ClientStateStore, MemoryStore
from fedloom.algorithms.registry import AlgorithmContext, register
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientConfig, ClientResult, Downlink, ServerState
from fedloom.core.rng import Purpose
from fedloom.core.validate import Problems


@dataclass(frozen=True, slots=True, kw_only=True)
class DittoOptions:
    """``lam``: Ditto's lambda, how strongly personal models are pulled to the global one."""

    lam: float = 0.1

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.lam >= 0, "lam", self.lam, "must be >= 0")
        p.raise_if_any()


def personal_start(downlink: Downlink) -> torch.Tensor:
    """Where the personal pass starts: the client's own model, else the global one."""
    return downlink.extras.get("personal", downlink.params)


class Ditto(Base):
    """FedAvg for the global model plus per-client personal models."""

    name = "ditto"
    personalized = True

    def __init__(self, options: DittoOptions | None = None, *,
                 store: ClientStateStore | None = None) -> None:
        self.lam = (options or DittoOptions()).lam
        self.local = LocalSpec(passes=(ExtraPass(
            name="personal", start=personal_start, correct_grads=partial(proximal_pull, self.lam),
            purpose=Purpose.PERSONAL),))
        self.store: ClientStateStore = store or MemoryStore()

    def result_needs(self, layout: ParamLayout) -> ResultNeeds:
        """Each result carries its personal model."""
        return ResultNeeds(extras={"personal": layout.size})

    def configure(self, round: int, state: ServerState, cohort: Sequence[int],
                  client: ClientConfig) -> list[Downlink]:
        tasks = []
        for cid in cohort:
            personal = self.store.get(cid, "personal")
            extras = {} if personal is None else {"personal": personal}
            tasks.append(Downlink(round=round, client_id=cid, params=state.params, config=client,
                                  extras=extras))
        return tasks

    def aggregate(self, round: int, state: ServerState,
                  results: Sequence[ClientResult]) -> ServerState:
        for r in results:
            self.store.put(r.client_id, "personal", r.extras["personal"])
        return mean_step(round, state, results)

    def personal_params(self, client_id: int, params: torch.Tensor) -> torch.Tensor:
        """Client ``client_id``'s personal model (the global one if it never trained)."""
        personal = self.store.get(client_id, "personal")
        return params if personal is None else personal


@register("ditto", DittoOptions)
def _build(options: DittoOptions, context: AlgorithmContext) -> Ditto:
    return Ditto(options, store=context.store)
