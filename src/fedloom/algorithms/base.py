"""The algorithm seam: a server half (init, configure, aggregate) and a declarative client half.

The client half is a :class:`LocalSpec` of optional hooks the executor calls inside its own SGD
loop, so the same algorithm runs serially, in worker processes or vectorized. FedAvg uses none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from fedloom.algorithms.aggregate import example_weighted_params
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientConfig, ClientResult, Downlink, ServerState

GradHook = Callable[[torch.Tensor, torch.Tensor, Downlink], None]


def broadcast(round: int, state: ServerState, cohort: Sequence[int],
              client: ClientConfig) -> list[Downlink]:
    """The same global model and client config for every client of the cohort."""
    return [Downlink(round=round, client_id=c, params=state.params, config=client)
            for c in cohort]


def proximal_pull(lam: float, grads: torch.Tensor, params: torch.Tensor,
                  downlink: Downlink) -> None:
    """``grads += lam * (params - global)``: the gradient of ``lam/2 ||w - w_global||^2``."""
    grads.add_(params - downlink.params[: params.shape[0]], alpha=lam)


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalSpec:
    """Hooks into the local SGD loop; ``None`` means the plain loop.

    Attributes:
        extra_loss: added to the task loss each step, given the trainable parameters (in layout
            order, differentiable) and the downlink (FedProx's proximal term).
        correct_grads: called after each backward as ``correct_grads(grads, params, downlink)``
            with the flat gradient and flat parameters of the trainable tensors (layout order);
            modifies ``grads`` in place (FedProx's proximal gradient, SCAFFOLD's correction).
        finish: turns the raw result into the uplink (FedNova's normalisation, DP clipping).
        start_loss: also report ``start_loss``, the received model's loss on all the client's
            training data before local training (q-FFL's F_k).
        start_grad: also return ``extras["start_grad"]``, the full local gradient at the
            received model (SCAFFOLD's option I).
        personal_lambda: after the global update, also train the client's personal model
            (``downlink.extras["personal"]``, else the global model) with the pull
            ``lambda/2 ||v - w_global||^2`` and return it as ``extras["personal"]`` (Ditto).
    """

    extra_loss: Callable[[Sequence[torch.Tensor], Downlink], torch.Tensor] | None = None
    correct_grads: GradHook | None = None
    finish: Callable[[ClientResult, Downlink], ClientResult] | None = None
    start_loss: bool = False
    start_grad: bool = False
    personal_lambda: float | None = None

    @property
    def is_plain(self) -> bool:
        return (self.extra_loss is None and self.correct_grads is None and self.finish is None
                and not self.start_loss and not self.start_grad and self.personal_lambda is None)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultNeeds:
    """What an algorithm's ``aggregate`` reads from each client result besides ``params``.

    A deployment server checks every fit reply against it (and rejects one that lacks them), so
    an algorithm with extras or required metrics declares them with a method
    ``result_needs(layout) -> ResultNeeds``; one without that method needs nothing more.

    Attributes:
        extras: extra tensors by name and number of values.
        metrics: metric names that must be present.
    """

    extras: Mapping[str, int] = field(default_factory=dict)
    metrics: frozenset[str] = frozenset()


def result_needs(algorithm: object, layout: ParamLayout) -> ResultNeeds:
    """The algorithm's declared :class:`ResultNeeds` (none declared: nothing beyond params)."""
    declare = getattr(algorithm, "result_needs", None)
    return declare(layout) if callable(declare) else ResultNeeds()


@runtime_checkable
class ReducibleAlgorithm(Algorithm, Protocol):
    """An algorithm whose aggregate depends on the results only through their example-weighted
    mean ``sum_k n_k x_k / sum_k n_k`` (``n_k = num_examples``), declared by ``reducible``.

    A fleet may then compute that mean with one reduce collective instead of gathering every
    update (the distributed fleet's ``fleet.aggregation=reduce``); ``aggregate_mean(round,
    state, mean)`` must equal ``aggregate(round, state, results)`` up to float rounding. A
    subclass whose aggregate is not such a mean sets ``reducible = False``.
    """

    reducible: bool

    def aggregate_mean(self, round: int, state: ServerState,
                       mean: torch.Tensor) -> ServerState: ...


def step_from_mean(algorithm: ReducibleAlgorithm, round: int, state: ServerState,
                   results: Sequence[ClientResult]) -> ServerState:
    """``aggregate`` of an algorithm whose step reads the results only through their
    example-weighted mean: that mean, then ``aggregate_mean`` (no results: nothing moves)."""
    if not results:
        return ServerState(round=round, params=state.params, extras=state.extras)
    return algorithm.aggregate_mean(round, state, example_weighted_params(results))
