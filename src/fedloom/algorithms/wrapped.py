"""An algorithm that changes part of another and hands it the rest (privacy, compression)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedloom.algorithms.base import Algorithm, LocalSpec, ResultNeeds, Selection
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientConfig, ClientResult, Downlink, ServerState


class Wrapped:
    """Every member of :class:`~fedloom.algorithms.base.Algorithm` delegated to ``inner``;
    subclasses override what they change (``local`` may be given a new client half)."""

    def __init__(self, inner: Algorithm, local: LocalSpec | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.local: LocalSpec = inner.local if local is None else local
        self.asynchronous = inner.asynchronous
        self.keeps_partial_work = inner.keeps_partial_work
        self.reducible = inner.reducible
        self.personalized = inner.personalized
        self.store = inner.store

    def init(self, params: torch.Tensor) -> ServerState:
        return self.inner.init(params)

    def select(self, round: int, state: ServerState, selection: Selection) -> list[int]:
        return self.inner.select(round, state, selection)

    def configure(self, round: int, state: ServerState, cohort: Sequence[int],
                  client: ClientConfig) -> list[Downlink]:
        return self.inner.configure(round, state, cohort, client)

    def aggregate(self, round: int, state: ServerState,
                  results: Sequence[ClientResult]) -> ServerState:
        return self.inner.aggregate(round, state, results)

    def result_needs(self, layout: ParamLayout) -> ResultNeeds:
        return self.inner.result_needs(layout)

    def personal_params(self, client_id: int, params: torch.Tensor) -> torch.Tensor:
        return self.inner.personal_params(client_id, params)

    def row_metrics(self, state: ServerState) -> Mapping[str, float]:
        return self.inner.row_metrics(state)


__all__ = ["Wrapped"]
