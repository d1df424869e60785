"""The algorithm seam: a server half (init, configure, aggregate) and a declarative client half.

The client half is a :class:`LocalSpec` of optional hooks the executor calls inside its own SGD
loop, so the same algorithm runs serially, in worker processes or vectorized. FedAvg uses none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from fedloom.core.packages import ClientConfig, ClientResult, Downlink, ServerState


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalSpec:
    """Hooks into the local SGD loop; ``None`` means the plain loop.

    Attributes:
        extra_loss: added to the task loss each step, given the trainable parameters (in layout
            order, differentiable) and the downlink (FedProx's proximal term).
        correct_grads: called after backward with the flat gradient and the downlink, to
            modify it in place (SCAFFOLD's control-variate correction).
        finish: turns the raw result into the uplink (FedNova's normalisation, DP clipping).
    """

    extra_loss: Callable[[Sequence[torch.Tensor], Downlink], torch.Tensor] | None = None
    correct_grads: Callable[[torch.Tensor, Downlink], None] | None = None
    finish: Callable[[ClientResult, Downlink], ClientResult] | None = None

    @property
    def is_plain(self) -> bool:
        return self.extra_loss is None and self.correct_grads is None and self.finish is None


PLAIN = LocalSpec()


class Algorithm(Protocol):
    """A federated algorithm. Results reach ``aggregate`` sorted by client id."""

    name: str
    local: LocalSpec

    def init(self, params: torch.Tensor) -> ServerState: ...

    def configure(self, round: int, state: ServerState, cohort: Sequence[int],
                  client: ClientConfig) -> list[Downlink]: ...

    def aggregate(self, round: int, state: ServerState,
                  results: Sequence[ClientResult]) -> ServerState: ...
