"""The chain every run is made of, assembled in one place: data -> model -> layout -> client
spec -> fleet -> evaluator (:func:`assemble`).

:func:`fedloom.app.build.build_run` (a config, for ``fedloom run``, torchrun and ``fedloom
server``) and the Python API (:class:`~fedloom.runtime.simulation.Simulation`,
:class:`~fedloom.runtime.simulation.AsyncSimulation`) both call it; only the loop they put
around the parts differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from fedloom.algorithms.base import Algorithm
from fedloom.core.allocator import keep_freed_memory
from fedloom.core.errors import ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean
from fedloom.core.openmp import note_if_too_late
from fedloom.data.dataset import FederatedData
from fedloom.fleets import Fleet, FleetConfig, FleetKind, make_fleet
from fedloom.fleets.base import FleetBase
from fedloom.models import ModelFn, init_module
from fedloom.training.evaluation import (
    CentralEvaluator,
    ClientLosses,
    EvalConfig,
    PersonalFn,
    RoundEvaluator,
    eval_batch_size,
)
from fedloom.training.spec import ClientSpec
from fedloom.training.trainer import LossFn


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetRequest:
    """What a fleet factory gets: the clients' spec, the model's layout, the algorithm, and the
    ids of the collaborators the fleet serves (the run's clients, or a hierarchy root's
    aggregators)."""

    spec: ClientSpec
    layout: ParamLayout
    algorithm: Algorithm
    client_ids: Sequence[int]


FleetFactory = Callable[[FleetRequest], Fleet]
#: a fleet kind ("serial", ...), its config, a built fleet, or a factory of one
FleetChoice = str | FleetConfig | Fleet | FleetFactory


@dataclass(frozen=True, slots=True, kw_only=True)
class Parts:
    """A run's pieces, before a loop is put around them.

    Attributes:
        central: the server's own test-set evaluator.
        evaluate: what a round evaluates (the fleet's spread evaluation when it has one).
        losses: clients' training losses at a model, on the server's copy of the data.
    """

    layout: ParamLayout
    initial_params: torch.Tensor
    spec: ClientSpec
    fleet: Fleet
    central: CentralEvaluator
    evaluate: RoundEvaluator
    losses: ClientLosses = field(repr=False)


def assemble(*, data: FederatedData, model_fn: ModelFn, algorithm: Algorithm, seed: int = 0,
             fleet: FleetChoice = "serial", loss_fn: LossFn = F.cross_entropy,
             evaluation: EvalConfig | None = None, reducible: bool | None = None,
             personal: PersonalFn | None = None,
             client_ids: Sequence[int] | None = None) -> Parts:
    """Build a run's parts: the initial model drawn from ``seed``, the clients' spec, the fleet
    and the evaluators. ``algorithm`` is the one whose client half the clients run;
    ``reducible`` and ``personal`` override what it says (a hierarchy aggregates per
    aggregator, and its personal models live with the leaves)."""
    keep_freed_memory()  # this process trains or evaluates from here on
    note_if_too_late()
    evaluation = evaluation or EvalConfig()
    model = init_module(model_fn, seed)
    layout = ParamLayout.from_module(model)
    devices = fleet.device_list if isinstance(fleet, FleetConfig) else ["cpu"]
    batch = evaluation.batch_size or eval_batch_size(
        model_fn, data.test, "cpu" if all(d == "cpu" for d in devices) else devices[0])
    spec = ClientSpec(model_fn=model_fn, train=data.train, client_indices=data.client_train,
                      seed=seed, local=algorithm.local, loss_fn=loss_fn, test=data.test,
                      eval_batch_size=batch,
                      reducible=algorithm.reducible if reducible is None else reducible)
    built = _fleet(fleet, FleetRequest(
        spec=spec, layout=layout, algorithm=algorithm,
        client_ids=range(data.num_clients) if client_ids is None else client_ids))
    central = CentralEvaluator(model_fn=model_fn, test=data.test, batch_size=batch)

    def spread_or_server(params: torch.Tensor) -> dict[str, Mean]:
        spread = built.evaluate(params)
        return central(params) if spread is None else spread

    return Parts(
        layout=layout, initial_params=layout.module_to_flat(model), spec=spec, fleet=built,
        central=central,
        evaluate=RoundEvaluator(central=spread_or_server, model_fn=model_fn, data=data,
                                batch_size=batch, train=evaluation.train,
                                federated=evaluation.federated,
                                personal=personal or (algorithm.personal_params
                                                      if algorithm.personalized else None)),
        losses=ClientLosses(model_fn=model_fn, data=data, loss_fn=loss_fn,
                            batch_size=batch))


def _fleet(choice: FleetChoice, request: FleetRequest) -> Fleet:
    if isinstance(choice, str):
        kinds = [k.value for k in FleetKind]
        if choice not in kinds:
            raise ConfigError(f"fleet.kind = {choice!r}: must be one of {', '.join(kinds)}")
        choice = FleetConfig(kind=FleetKind(choice))
    if isinstance(choice, FleetConfig):
        built = make_fleet(choice, request.spec)
        if isinstance(built, FleetBase):
            built.start()  # workers start while the evaluators are built and round 1 set up
        return built
    if isinstance(choice, FleetBase) or not callable(choice):
        return choice
    return choice(request)
