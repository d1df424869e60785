"""Simulations from Python objects: the round loops over simulated clients built from a dataset.

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

from torch.nn import functional as F

from fedloom.algorithms.base import Algorithm, AsyncAlgorithm
from fedloom.core.errors import ConfigError
from fedloom.core.packages import ClientConfig
from fedloom.data.dataset import FederatedData
from fedloom.fleets.base import Fleet
from fedloom.models import ModelFn
from fedloom.runtime.assemble import FleetChoice, assemble
from fedloom.runtime.async_loop import AsyncLoop
from fedloom.runtime.async_selection import SelectorChoice
from fedloom.runtime.clock import ClientClock, ClockConfig
from fedloom.runtime.loop import History, ServerLoop
from fedloom.runtime.sampling import Sampler, UniformSampler
from fedloom.runtime.simulated_clock import SimulatedClock
from fedloom.runtime.sinks import Sink
from fedloom.training.evaluation import EvalConfig
from fedloom.training.trainer import LossFn

__all__ = ["AsyncSimulation", "History", "Simulation"]


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
                 fleet: FleetChoice = "serial", sampler: Sampler | None = None,
                 min_success: int | None = None, dropout: float = 0.0, eval_every: int = 1,
                 eval_batch_size: int | None = None, eval_train: bool = False,
                 eval_federated: bool = False, clock: ClockConfig | None = None,
                 threads: int | None = None, loss_fn: LossFn = F.cross_entropy,
                 sinks: Sequence[Sink] = ()) -> None:
        if rounds < 1:
            raise ConfigError(f"rounds = {rounds}: must be >= 1")
        parts = assemble(data=data, model_fn=model_fn, algorithm=algorithm, seed=seed,
                         fleet=fleet, loss_fn=loss_fn, evaluation=EvalConfig(
                             every=eval_every, batch_size=eval_batch_size, train=eval_train,
                             federated=eval_federated))
        self.data, self.model_fn, self.spec, self.evaluator = (data, model_fn, parts.spec,
                                                               parts.central)
        super().__init__(
            algorithm=algorithm, fleet=parts.fleet,
            sampler=sampler or UniformSampler(num_clients=data.num_clients, size=cohort_size,
                                              seed=seed),
            evaluate=parts.evaluate, client=client, rounds=rounds, layout=parts.layout,
            initial_params=parts.initial_params, seed=seed, min_success=min_success,
            dropout=dropout, eval_every=eval_every, threads=threads, sinks=sinks,
            losses=parts.losses,
            clock=None if clock is None else ClientClock(clock, num_clients=data.num_clients,
                                                         seed=seed))


class AsyncSimulation(AsyncLoop):
    """An asynchronous simulation: the async loop over simulated clients on a simulated clock
    (``clock.concurrency`` train at once), until ``versions`` global models were made."""

    def __init__(self, *, data: FederatedData, model_fn: ModelFn, algorithm: AsyncAlgorithm,
                 client: ClientConfig, versions: int, clock: ClockConfig, seed: int = 0,
                 fleet: FleetChoice = "serial", eval_every: int = 1,
                 eval_batch_size: int | None = None, eval_train: bool = False,
                 eval_federated: bool = False, threads: int | None = None,
                 loss_fn: LossFn = F.cross_entropy, sinks: Sequence[Sink] = (),
                 selector: SelectorChoice | None = None) -> None:
        selector = clock.selector if selector is None else selector
        parts = assemble(data=data, model_fn=model_fn, algorithm=algorithm, seed=seed,
                         fleet=fleet, loss_fn=loss_fn, evaluation=EvalConfig(
                             every=eval_every, batch_size=eval_batch_size, train=eval_train,
                             federated=eval_federated))
        self.data, self.model_fn, self.spec = data, model_fn, parts.spec
        super().__init__(
            algorithm=algorithm, fleet=simulated(parts.fleet, clock, data, seed),
            client=client, versions=versions, layout=parts.layout,
            initial_params=parts.initial_params, evaluate=parts.evaluate, seed=seed,
            eval_every=eval_every, concurrency=min(clock.concurrency, data.num_clients),
            task_timeout=None, threads=threads, sinks=sinks, selector=selector,
            num_clients=data.num_clients)


def simulated(fleet: Fleet, clock: ClockConfig, data: FederatedData, seed: int) -> SimulatedClock:
    """``fleet``'s clients on the simulated clock ``clock`` describes."""
    return SimulatedClock(fleet, clock=ClientClock(clock, num_clients=data.num_clients, seed=seed),
                          num_clients=data.num_clients, num_examples=data.example_counts())
