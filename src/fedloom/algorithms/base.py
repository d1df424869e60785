"""The algorithm seam: a server half and a declarative client half, in one closed contract.

Everything the round loop, the fleets and a deployment server ask of an algorithm is declared
here, with its default in :class:`Base`; nothing is looked up with ``getattr``. State that must
survive a checkpoint lives in :class:`ServerState` (``params`` and ``extras``) or in the run's
client-state store, never in private attributes.

The client half is a :class:`LocalSpec` of generic hooks the executor calls inside its own SGD
loop, so the same algorithm runs serially, in worker processes or vectorized: a pass before
training (:attr:`LocalSpec.before`, given a :class:`LocalView` of the received model on the
client's data), an extra loss term and a per-step gradient correction, further SGD passes after
the main one (:class:`ExtraPass`) and an end step. FedAvg uses none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeGuard

import torch

from fedloom.algorithms.client_store import ClientStateStore
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientConfig, ClientResult, Downlink, ServerState
from fedloom.core.rng import Purpose

GradHook = Callable[[torch.Tensor, torch.Tensor, Downlink], None]
ExtraLoss = Callable[[Sequence[torch.Tensor], Downlink], torch.Tensor]
Finish = Callable[[ClientResult, Downlink], ClientResult]


class LocalView(Protocol):
    """The received model on one client's training data, for a pass before training."""

    def loss(self) -> Mean:
        """The mean task loss over all the client's training examples."""
        ...

    def gradient(self) -> torch.Tensor:
        """The gradient of that loss, flat over the trainable tensors (layout order)."""
        ...


#: ``before(view, downlink) -> (metrics, extras)`` added to the client's result
BeforeHook = Callable[[LocalView, Downlink],
                      tuple[Mapping[str, Mean], Mapping[str, torch.Tensor]]]


def proximal_pull(lam: float, grads: torch.Tensor, params: torch.Tensor,
                  downlink: Downlink) -> None:
    """``grads += lam * (params - global)``: the gradient of ``lam/2 ||w - w_global||^2``."""
    grads.add_(params - downlink.params[: params.shape[0]], alpha=lam)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtraPass:
    """One more local SGD pass after the main one (Ditto's personal model).

    It starts from ``start(downlink)``, draws its batches from the ``purpose`` stream of
    ``(seed, round, client_id)`` and applies ``correct_grads`` after each backward; its final
    parameters return as ``extras[name]`` and its mean loss as ``metrics[name + "_train_loss"]``.
    """

    name: str
    start: Callable[[Downlink], torch.Tensor]
    correct_grads: GradHook | None = None
    purpose: str = Purpose.PERSONAL


@dataclass(frozen=True, slots=True, kw_only=True)
class PerExampleClip:
    """Sample-level DP-SGD (Abadi et al. 2016) in the local loop: each example's gradient of
    the task loss is clipped to L2 norm ``clip`` (over all trainable tensors), the clipped
    gradients are summed, ``N(0, (noise_multiplier * clip)^2)`` is added to every coordinate
    (drawn from the ``(seed, round, client_id, purpose)`` stream, one draw of all trainable
    values per step) and the sum is divided by the batch's number of examples. ``extra_loss``
    and ``correct_grads`` act on that private gradient (they read no data)."""

    clip: float
    noise_multiplier: float
    seed: int
    purpose: str = "dp_sgd"


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalSpec:
    """Hooks into the local SGD loop; the defaults are the plain loop. Hooks must be picklable
    (module-level functions, ``functools.partial``) for the process fleet's workers.

    Attributes:
        before: a pass at the received model before training; returns metrics and extras for
            the result (q-FFL's loss ``F_k``, SCAFFOLD option I's full gradient).
        extra_loss: added to the task loss each step, given the trainable parameters (in layout
            order, differentiable) and the downlink.
        correct_grads: called after each backward as ``correct_grads(grads, params, downlink)``
            with the flat gradient and flat parameters of the trainable tensors (layout order);
            modifies ``grads`` in place (FedProx's proximal gradient, SCAFFOLD's correction).
        passes: further SGD passes after the main one, each from its own start.
        finish: turns the raw result into the uplink (FedNova's normalisation, DP clipping).
        per_example: sample-level DP-SGD (per-example clipping and noise) in place of the
            plain task-loss gradient.
    """

    before: BeforeHook | None = None
    extra_loss: ExtraLoss | None = None
    correct_grads: GradHook | None = None
    passes: tuple[ExtraPass, ...] = ()
    finish: Finish | None = None
    per_example: PerExampleClip | None = None

    @property
    def is_plain(self) -> bool:
        return (self.before is None and self.extra_loss is None and self.correct_grads is None
                and not self.passes and self.finish is None and self.per_example is None)


PLAIN = LocalSpec()


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultNeeds:
    """What an algorithm's server half reads from each client result besides ``params``; a
    deployment server rejects a fit reply that lacks it.

    Attributes:
        extras: extra tensors by name and number of values.
        metrics: metric names that must be present.
    """

    extras: Mapping[str, int] = field(default_factory=dict)
    metrics: frozenset[str] = frozenset()


class Selection(Protocol):
    """How a round's cohort can be chosen: what the round loop offers :meth:`Algorithm.select`.

    Attributes:
        size: the configured cohort size (``cohort.size``).
    """

    size: int

    def sample(self, size: int) -> list[int]:
        """``size`` candidates drawn by the run's sampler for this round (seeded by
        ``(seed, round)``), sorted; fewer when fewer clients are available."""
        ...

    def losses(self, client_ids: Sequence[int]) -> dict[int, float]:
        """Each client's mean training loss at the current global model (clients that could
        not answer are missing)."""
        ...


class Algorithm(Protocol):
    """A federated algorithm: everything the loop, the fleets and a server ask of one.

    Attributes:
        name: the registry name.
        local: the client half.
        asynchronous: results are consumed one at a time as they arrive
            (:class:`AsyncAlgorithm`); otherwise in rounds through :meth:`aggregate`.
        keeps_partial_work: a straggler's reduced local work is kept rather than dropped
            (FedProx); see :mod:`fedloom.runtime.heterogeneity`.
        reducible: ``aggregate`` reads the results only through their example-weighted mean
            ``sum_k n_k x_k / sum_k n_k``, so a fleet may hand it results that all carry that
            mean (the distributed and vectorized fleets' ``fleet.aggregation=reduce``).
        personalized: clients keep models of their own (:meth:`personal_params`).
        store: the client-state store ``aggregate`` writes, or None. The round loop keeps
            what a round's attempt writes there only when it adopts the attempt's aggregate.
    """

    name: str
    local: LocalSpec
    asynchronous: bool
    keeps_partial_work: bool
    reducible: bool
    personalized: bool

    @property
    def store(self) -> ClientStateStore | None: ...

    def init(self, params: torch.Tensor) -> ServerState: ...

    def select(self, round: int, state: ServerState, selection: Selection) -> list[int]:
        """The round's cohort, sorted."""
        ...

    def configure(self, round: int, state: ServerState, cohort: Sequence[int],
                  client: ClientConfig) -> list[Downlink]: ...

    def aggregate(self, round: int, state: ServerState,
                  results: Sequence[ClientResult]) -> ServerState:
        """The next state from the round's usable results, sorted by client id."""
        ...

    def result_needs(self, layout: ParamLayout) -> ResultNeeds: ...

    def personal_params(self, client_id: int, params: torch.Tensor) -> torch.Tensor:
        """The model client ``client_id`` uses when the global model is ``params`` (that one
        unless ``personalized``)."""
        ...

    def row_metrics(self, state: ServerState) -> Mapping[str, float]:
        """Numbers for the metrics row of the round that made ``state`` (e.g. a clipping
        norm, a privacy budget spent)."""
        ...


class AsyncAlgorithm(Algorithm, Protocol):
    """An algorithm that consumes client results one at a time, each with its staleness (how
    many global model versions were made since the client received its model)."""

    def on_result(self, state: ServerState, result: ClientResult, start: torch.Tensor,
                  staleness: int) -> tuple[ServerState, bool]:
        """The new state, and whether it is a new global model version."""
        ...


def is_async(algorithm: Algorithm) -> TypeGuard[AsyncAlgorithm]:
    """Whether ``algorithm`` declares itself asynchronous."""
    return algorithm.asynchronous


class Base:
    """Defaults for every member of :class:`Algorithm` but ``aggregate``: plain local SGD, a
    cohort drawn by the sampler, the global model broadcast, nothing extra in the results.

    Subclasses set ``name`` and override what differs; extra server-side tensors come from
    :meth:`init_extras`.
    """

    name: str = "base"
    local: LocalSpec = PLAIN
    asynchronous: bool = False
    keeps_partial_work: bool = False
    reducible: bool = False
    personalized: bool = False
    store: ClientStateStore | None = None

    def init(self, params: torch.Tensor) -> ServerState:
        return ServerState(round=0, params=params.clone(), extras=self.init_extras(params))

    def init_extras(self, params: torch.Tensor) -> dict[str, torch.Tensor]:
        """Server-side tensors besides the model (optimiser moments, control variates)."""
        return {}

    def select(self, round: int, state: ServerState, selection: Selection) -> list[int]:
        return selection.sample(selection.size)

    def configure(self, round: int, state: ServerState, cohort: Sequence[int],
                  client: ClientConfig) -> list[Downlink]:
        return broadcast(round, state, cohort, client)

    def result_needs(self, layout: ParamLayout) -> ResultNeeds:
        return ResultNeeds()

    def personal_params(self, client_id: int, params: torch.Tensor) -> torch.Tensor:
        return params

    def row_metrics(self, state: ServerState) -> Mapping[str, float]:
        return {}


def broadcast(round: int, state: ServerState, cohort: Sequence[int],
              client: ClientConfig) -> list[Downlink]:
    """The same global model and client config for every client of the cohort."""
    return [Downlink(round=round, client_id=c, params=state.params, config=client)
            for c in cohort]
