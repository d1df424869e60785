"""Ditto (Li, Hu, Beirami, Smith, ICML 2021): fair and robust personalisation.

Each selected client makes FedAvg's local update of the global model ``w`` and, besides, trains
its own personal model ``v_k`` on ``F_k(v) + lam/2 ||v - w||^2`` (the trainer's personal pass).
The server averages the global updates as FedAvg does and keeps every ``v_k`` in the client-state
store; a client never selected uses the global model. Evaluate with ``eval.federated: true`` to
see both the global and the personalised accuracy on the clients' local test data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedloom.algorithms.base import LocalSpec, ResultNeeds
from fedloom.algorithms.client_store import ClientStateStore, MemoryStore
from fedloom.algorithms.fedavg import FedAvg
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientConfig, ClientResult, Downlink, ServerState
from fedloom.core.validate import Problems


@dataclass(frozen=True, slots=True, kw_only=True)
class DittoOptions:
    """``lam``: Ditto's lambda, how strongly personal models are pulled to the global one."""

    lam: float = 0.1

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.lam >= 0, "lam", self.lam, "must be >= 0")
        p.raise_if_any()


class Ditto(FedAvg):
    """FedAvg for the global model plus per-client personal models."""

    name = "ditto"
    reducible = False  # aggregate also keeps each result's personal model: it needs them all

    def result_needs(self, layout: ParamLayout) -> ResultNeeds:
        """Each result carries its personal model."""
        return ResultNeeds(extras={"personal": layout.size})

    def __init__(self, options: DittoOptions | None = None, *,
                 store: ClientStateStore | None = None) -> None:
        super().__init__()
        self.lam = (options or DittoOptions()).lam
        self.local = LocalSpec(personal_lambda=self.lam)
        self.store: ClientStateStore = store or MemoryStore()

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
        return super().aggregate(round, state, results)

    def personal_params(self, client_id: int, global_params: torch.Tensor) -> torch.Tensor:
        """Client ``client_id``'s personal model (the global one if it never trained)."""
        personal = self.store.get(client_id, "personal")
        return global_params if personal is None else personal
