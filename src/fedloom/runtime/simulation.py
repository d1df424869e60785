"""A federated simulation: the server loop over simulated clients built from a dataset.

Example:
    >>> from fedloom import ClientConfig, DataConfig, FedAvg, ModelConfig, Simulation
    >>> from fedloom import load_federated, model_factory
    >>> data = load_federated(DataConfig(name="synthetic", num_clients=10), seed=0)
    >>> model_fn = model_factory(ModelConfig(name="logreg"), data.input_shape, data.num_classes)
    >>> sim = Simulation(data=data, model_fn=model_fn, algorithm=FedAvg(), rounds=2,
    ...                  cohort_size=5, client=ClientConfig(lr=0.01, batch_size=10))
    >>> history = sim.run()
    >>> [row["round"] for row in history.rows]
    [1, 2]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from fedloom.algorithms.base import Algorithm
from fedloom.core.errors import ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientConfig
from fedloom.core.threads import torch_threads
from fedloom.data.dataset import FederatedData
from fedloom.fleets import Fleet, FleetConfig, FleetKind, make_fleet
from fedloom.models import ModelFn, init_module
from fedloom.runtime.clock import ClientClock, ClockConfig
from fedloom.runtime.loop import (  # re-exported: the round loop's names, for users of this module
    History,
    ServerLoop,
    is_worker,
    split_outcomes,
)
from fedloom.runtime.sampling import Sampler, UniformSampler
from fedloom.runtime.sinks import Sink
from fedloom.training.evaluation import CentralEvaluator, RoundEvaluator
from fedloom.training.spec import ClientSpec
from fedloom.training.trainer import LossFn

__all__ = ["History", "ServerLoop", "Simulation", "is_worker", "split_outcomes", "torch_threads"]


class Simulation(ServerLoop):
    """A federated simulation: the server loop over a fleet of simulated clients.

    Args:
        data: the federated dataset.
        model_fn: builds the model; the initial global model is drawn from ``seed``.
        algorithm: the server and client halves (e.g. :class:`fedloom.FedAvg`).
        client: local training hyperparameters sent to every client.
        rounds: number of rounds.
        cohort_size: clients per round (uniform sampling without replacement).
        fleet: a fleet kind ("serial", "process", ...), a :class:`FleetConfig`, or a
            :class:`Fleet` object built by the caller.
        min_success: usable client results a round needs (None: the whole cohort); with fewer
            the run stops with a :class:`ClientError` listing the failures, keeping the state
            of the last completed round.
        dropout: the share of each cohort that never answers (simulated system heterogeneity;
            stragglers come from ``client.straggler_fraction``).
        eval_every: evaluate the global model every this many rounds (and at the end).
        eval_train: also evaluate the global model on all training examples.
        eval_federated: also evaluate on every client's local test split (and personal models).
        clock: client speeds; rounds then also report ``sim_time`` (simulated seconds).
        threads: torch threads of this process while running (None: all cores).
    """

    def __init__(self, *, data: FederatedData, model_fn: ModelFn, algorithm: Algorithm,
                 client: ClientConfig, rounds: int, cohort_size: int, seed: int = 0,
                 fleet: str | FleetConfig | Fleet = "serial", sampler: Sampler | None = None,
                 min_success: int | None = None, dropout: float = 0.0, eval_every: int = 1,
                 eval_batch_size: int = 1000, eval_train: bool = False,
                 eval_federated: bool = False, clock: ClockConfig | None = None,
                 threads: int | None = None,
                 loss_fn: LossFn = F.cross_entropy, sinks: Sequence[Sink] = ()) -> None:
        if rounds < 1:
            raise ConfigError(f"rounds = {rounds}: must be >= 1")
        self.data = data
        self.model_fn = model_fn
        model = init_module(model_fn, seed)
        layout = ParamLayout.from_module(model)
        self.spec = ClientSpec(model_fn=model_fn, train=data.train,
                               client_indices=data.client_train, seed=seed,
                               local=algorithm.local, loss_fn=loss_fn, test=data.test,
                               eval_batch_size=eval_batch_size)
        if isinstance(fleet, str):
            kinds = [k.value for k in FleetKind]
            if fleet not in kinds:
                raise ConfigError(f"fleet.kind = {fleet!r}: must be one of {', '.join(kinds)}")
            fleet = FleetConfig(kind=FleetKind(fleet))
        built = make_fleet(fleet, self.spec) if isinstance(fleet, FleetConfig) else fleet
        self.evaluator = CentralEvaluator(model_fn=model_fn, test=data.test,
                                          batch_size=eval_batch_size)
        super().__init__(
            algorithm=algorithm, fleet=built,
            sampler=sampler or UniformSampler(num_clients=data.num_clients, size=cohort_size,
                                              seed=seed),
            evaluate=RoundEvaluator(
                central=self._central, model_fn=model_fn, data=data, batch_size=eval_batch_size,
                train=eval_train, federated=eval_federated,
                personal=getattr(algorithm, "personal_params", None)),
            client=client, rounds=rounds, layout=layout,
            initial_params=layout.module_to_flat(model), seed=seed, min_success=min_success,
            dropout=dropout, eval_every=eval_every, threads=threads, sinks=sinks,
            clock=None if clock is None else ClientClock(clock, num_clients=data.num_clients,
                                                         seed=seed))

    def _central(self, params: torch.Tensor) -> dict[str, Mean]:
        spread = self.fleet.evaluate(params)
        return self.evaluator(params) if spread is None else spread

