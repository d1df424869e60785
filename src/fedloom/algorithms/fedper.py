"""FedPer (Arivazhagan, Aggarwal, Singh, Choudhary, 2019): federated base layers, personal heads.

The model's last ``personal_layers`` layers (modules with parameters, in layout order) are each
client's own: a client that has trained keeps its head in the client-state store and always
trains from the global base layers plus that head; only the base layers it learns shape the
global model for others. The server averages the results as FedAvg does, so the global model is
the cohort's average (its head is what a client that never trained starts from, and what central
evaluation sees); the personalised models are global base + own head
(:meth:`FedPer.personal_params`), evaluated with ``eval.federated: true``.

Example:
    >>> # fedloom run configs/default.yaml algorithm.name=fedper algorithm.personal_layers=1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedloom.algorithms.aggregate import mean_step
from fedloom.algorithms.base import Base
from fedloom.algorithms.client_store import ClientStateStore, MemoryStore
from fedloom.algorithms.registry import AlgorithmContext, register
from fedloom.core.errors import ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientConfig, ClientResult, Downlink, ServerState
from fedloom.core.validate import Problems


@dataclass(frozen=True, slots=True, kw_only=True)
class FedPerOptions:
    """``personal_layers``: how many of the model's last layers are personal (the head)."""

    personal_layers: int = 1

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.personal_layers >= 1, "personal_layers", self.personal_layers,
                "must be >= 1")
        p.raise_if_any()


def head_indices(layout: ParamLayout, personal_layers: int) -> torch.Tensor:
    """Positions in the flat vector of the last ``personal_layers`` layers' trainable tensors
    (a layer: the tensors sharing a module name, ``fc.weight`` and ``fc.bias``)."""
    trainable = [e for e in layout.entries if e.trainable]
    layers = list(dict.fromkeys(e.name.rpartition(".")[0] for e in trainable))
    if personal_layers >= len(layers):
        raise ConfigError(f"algorithm.personal_layers = {personal_layers}: the model has "
                          f"{len(layers)} layers with parameters ({', '.join(layers)}); at "
                          "least one must stay federated")
    head = set(layers[-personal_layers:])
    return torch.cat([torch.arange(e.offset, e.stop) for e in trainable
                      if e.name.rpartition(".")[0] in head])


class FedPer(Base):
    """FedAvg's average for the global model; every client keeps its own head layers.

    Args:
        layout: the model's layout (which values are the head).
        store: where each client's head lives between rounds.
    """

    name = "fedper"
    personalized = True

    def __init__(self, options: FedPerOptions | None = None, *, layout: ParamLayout,
                 store: ClientStateStore | None = None) -> None:
        self.options = options or FedPerOptions()
        self.head = head_indices(layout, self.options.personal_layers)
        self.store: ClientStateStore = store or MemoryStore()

    def configure(self, round: int, state: ServerState, cohort: Sequence[int],
                  client: ClientConfig) -> list[Downlink]:
        return [Downlink(round=round, client_id=c, params=self.personal_params(c, state.params),
                         config=client) for c in cohort]

    def aggregate(self, round: int, state: ServerState,
                  results: Sequence[ClientResult]) -> ServerState:
        for r in results:
            self.store.put(r.client_id, "head", r.params.index_select(0, self.head))
        return mean_step(round, state, results)

    def personal_params(self, client_id: int, params: torch.Tensor) -> torch.Tensor:
        """The global base layers with client ``client_id``'s own head (the global model for
        a client that never trained)."""
        head = self.store.get(client_id, "head")
        if head is None:
            return params
        return params.index_copy(0, self.head, head.to(params.dtype))


@register("fedper", FedPerOptions)
def _build(options: FedPerOptions, context: AlgorithmContext) -> FedPer:
    return FedPer(options, layout=context.require_layout("fedper"), store=context.store)
