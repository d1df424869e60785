"""FedLab's server handlers on fedloom's flat parameters and algorithms.

The global model is a :class:`~fedloom.core.layout.ParamLayout` plus one flat tensor (a
:class:`~fedloom.core.packages.ServerState`); aggregation is the algorithm's own
(:class:`~fedloom.algorithms.FedAvg` by default: ``fedloom.algorithms.aggregate.mean_step``;
:class:`~fedloom.algorithms.FedAsync`'s staleness-weighted mixing), not a re-implementation.

Packages (what :class:`~fedloom.runtime.fedlab.SerialTrainer` sends and these handlers take):

* downlink: ``[params, round]``: the flat model and, as a 1-element int64 tensor, the round
  the clients train in (sync) or the model's version (async);
* uplink, per client: ``[params, info]`` with ``info = [client_id, num_examples, round]``
  (int64; ``round`` echoes the downlink's). The client id lets the synchronous handler
  aggregate in client-id order whatever order the results arrive in (bitwise reproducible);
  the echoed version gives the asynchronous handler each result's staleness.

A package that does not fit (tensor count, shape, a client not asked this round, a second
result from one client, a round or version never sent, a non-finite value) raises a
:class:`PayloadError`; the server manager reports it as a ``MessageError`` with sender and code.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from fedloom.algorithms.asynchronous import FedAsync, FedAsyncOptions, Staleness
from fedloom.algorithms.base import Algorithm, AsyncAlgorithm
from fedloom.algorithms.fedavg import FedAvg
from fedloom.core.errors import ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientResult, ServerState
from fedloom.runtime.fedlab.codes import PayloadError, expect_tensors
from fedloom.runtime.sampling import Sampler, UniformSampler

UPLINK = "[params, info = (client_id, num_examples, round)]"


@dataclass(frozen=True, slots=True, kw_only=True)
class Uplink:
    """One client's package, checked."""

    params: torch.Tensor
    client_id: int
    num_examples: int
    round: int

    def result(self) -> ClientResult:
        return ClientResult(round=self.round, client_id=self.client_id, params=self.params,
                            num_examples=self.num_examples, num_steps=0)


def parse_uplink(payload: list[torch.Tensor], layout: ParamLayout) -> Uplink:
    params, info = expect_tensors(payload, 2, UPLINK)
    if params.dim() != 1 or params.shape[0] != layout.size or not params.is_floating_point():
        raise PayloadError(f"params: expected a flat float tensor of {layout.size} values, got "
                           f"{params.dtype} of shape {list(params.shape)}")
    if info.shape != (3,) or info.is_floating_point():
        raise PayloadError(f"info: expected 3 integers (client_id, num_examples, round), got "
                           f"{info.dtype} of shape {list(info.shape)}")
    client_id, num_examples, round = (int(v) for v in info.tolist())
    if num_examples < 1:
        raise PayloadError(f"client {client_id}: num_examples = {num_examples}; must be >= 1")
    if not bool(torch.isfinite(params).all()):
        raise PayloadError(f"client {client_id}: params hold non-finite values")
    return Uplink(params=params.to("cpu", layout.dtype, copy=True), client_id=client_id,
                  num_examples=num_examples, round=round)


class _FlatModel:
    """A handler's global model: the user's module, its layout and the server state."""

    def __init__(self, model: nn.Module, params: torch.Tensor | None) -> None:
        self._module = model
        self.layout = ParamLayout.from_module(model)
        flat = self.layout.module_to_flat(model) if params is None else params
        self.layout.check(flat)
        self.num_clients = 0  # set by the server manager's setup
        self.state = ServerState(round=0, params=flat.detach().to("cpu").clone())

    @property
    def round(self) -> int:
        """Rounds completed (sync) or model versions made (async)."""
        return self.state.round

    @property
    def model_parameters(self) -> torch.Tensor:
        """The global model, flat (FedLab's name)."""
        return self.state.params

    @property
    def model(self) -> nn.Module:
        """The user's module holding the current global model."""
        self._module.load_state_dict(self.layout.unflatten(self.state.params))
        return self._module


class FedAvgServerHandler(_FlatModel):
    """FedLab's ``SyncServerHandler``/``FedAvgServerHandler``: ``global_round`` rounds, each
    over ``max(1, int(sample_ratio * num_clients))`` clients, aggregated by ``algorithm``.

    Cohorts come from fedloom's uniform sampler seeded by ``(seed, round)``, results are
    aggregated sorted by client id, and rounds are numbered from 1 in the downlink: with the
    same seed, data and client config the run equals ``fedloom.Simulation`` with the serial
    fleet, bit for bit.

    Args:
        model: the global model's module (its weights are the initial model unless
            ``params`` is given, flat, in its layout).
        algorithm: a synchronous fedloom algorithm whose downlink is the model alone
            (FedAvg, FedOpt, FedProx with its client half in the trainers' ClientSpec).
        sampler: draws each round's clients (default uniform, from ``seed``).
    """

    def __init__(self, model: nn.Module, *, global_round: int, num_clients: int = 0,
                 sample_ratio: float = 1.0, seed: int = 0, params: torch.Tensor | None = None,
                 algorithm: Algorithm | None = None, sampler: Sampler | None = None) -> None:
        if global_round < 1 or not 0 < sample_ratio <= 1:
            raise ConfigError(f"FedAvgServerHandler: global_round = {global_round}, "
                              f"sample_ratio = {sample_ratio}: need >= 1 and in (0, 1]")
        super().__init__(model, params)
        self.algorithm = algorithm or FedAvg()
        if self.algorithm.asynchronous:
            raise ConfigError(f"FedAvgServerHandler: {self.algorithm.name} is asynchronous; "
                              "use FedAsyncServerHandler")
        self.state = self.algorithm.init(self.state.params)
        self.global_round, self.sample_ratio, self.seed = global_round, sample_ratio, seed
        self.num_clients = num_clients
        self.sampler = sampler
        self.cohort: list[int] = []
        self._buffer: dict[int, ClientResult] = {}

    @property
    def num_clients_per_round(self) -> int:
        return max(1, int(self.sample_ratio * self.num_clients))

    @property
    def if_stop(self) -> bool:
        return self.round >= self.global_round

    @property
    def downlink_package(self) -> list[torch.Tensor]:
        return [self.state.params, torch.tensor([self.round + 1], dtype=torch.int64)]

    def sample_clients(self) -> list[int]:
        """The next round's clients, sorted."""
        if self.num_clients < 1:
            raise ConfigError("FedAvgServerHandler: num_clients is 0; the server manager sets "
                              "it in setup(), or pass num_clients")
        if self.sampler is None:
            self.sampler = UniformSampler(num_clients=self.num_clients,
                                          size=self.num_clients_per_round, seed=self.seed)
        self.cohort = sorted(self.sampler.sample(self.round + 1))
        self._buffer = {}
        return list(self.cohort)

    def load(self, payload: list[torch.Tensor]) -> bool:
        """Take one client's result; aggregate and return True when the round is complete."""
        up = parse_uplink(payload, self.layout)
        expected = self.round + 1
        if up.round != expected:
            raise PayloadError(f"client {up.client_id}: a result for round {up.round} during "
                               f"round {expected}")
        if up.client_id not in self.cohort:
            raise PayloadError(f"client {up.client_id} is not in round {expected}'s clients "
                               f"{self.cohort}")
        if up.client_id in self._buffer:
            raise PayloadError(f"client {up.client_id}: a second result in round {expected}")
        self._buffer[up.client_id] = up.result()
        if len(self._buffer) < len(self.cohort):
            return False
        results = [self._buffer[c] for c in sorted(self._buffer)]
        self.state = self.algorithm.aggregate(expected, self.state, results)
        self._buffer = {}
        return True


class FedAsyncServerHandler(_FlatModel):
    """FedLab's ``AsyncServerHandler``: every result updates the model at once (FedAsync, Xie
    et al. 2019), until ``global_round`` versions were made.

    A result computed from version ``v`` when the model is at version ``t`` has staleness
    ``t - v`` and is mixed in with weight ``alpha * s(t - v)``; ``s`` is fedloom's
    :func:`~fedloom.algorithms.asynchronous.staleness_weight` (constant, polynomial
    ``(t - v + 1)^-a``, hinge). ``algorithm`` may be any async fedloom algorithm (FedBuff).

    Attributes:
        arrivals: ``(client_id, version trained from, staleness)`` of every result taken.
    """

    def __init__(self, model: nn.Module, *, global_round: int, num_clients: int = 0,
                 params: torch.Tensor | None = None,
                 algorithm: AsyncAlgorithm | None = None) -> None:
        if global_round < 1:
            raise ConfigError(f"FedAsyncServerHandler: global_round = {global_round}: need >= 1")
        super().__init__(model, params)
        self.global_round, self.num_clients = global_round, num_clients
        self.algorithm: AsyncAlgorithm = algorithm or FedAsync()
        self.state = self.algorithm.init(self.state.params)
        self.arrivals: list[tuple[int, int, int]] = []
        self._issued: dict[int, torch.Tensor] = {}  # versions out with clients
        self._out: Counter[int] = Counter()

    def setup_optim(self, alpha: float, strategy: str = "constant", a: float = 10,
                    b: float = 4) -> None:
        """FedLab's way to choose FedAsync's mixing weight and staleness function."""
        self.algorithm = FedAsync(FedAsyncOptions(alpha=alpha, staleness=Staleness(strategy),
                                                  a=a, b=b))

    @property
    def if_stop(self) -> bool:
        return self.round >= self.global_round

    @property
    def downlink_package(self) -> list[torch.Tensor]:
        """The current model and its version; the version is remembered until its result
        (or results) come back."""
        version = self.round
        self._issued[version] = self.state.params
        self._out[version] += 1
        return [self.state.params, torch.tensor([version], dtype=torch.int64)]

    def load(self, payload: list[torch.Tensor]) -> bool:
        """Mix one result in; True (a new version) when the algorithm made one."""
        up = parse_uplink(payload, self.layout)
        if self._out[up.round] < 1:
            raise PayloadError(f"client {up.client_id}: a result from version {up.round}, which "
                               f"was not handed out (or its results are all in)")
        staleness = self.round - up.round
        self.arrivals.append((up.client_id, up.round, staleness))
        self.state, changed = self.algorithm.on_result(self.state, up.result(),
                                                       self._issued[up.round], staleness)
        self._out[up.round] -= 1
        if self._out[up.round] == 0:
            del self._out[up.round], self._issued[up.round]
        return changed
