"""Secure aggregation as a fleet: the server loop gets the cohort's mean and never an update.

A reducible algorithm (FedAvg, FedProx, FedOpt: its aggregate reads the results only through
``sum_k n_k x_k / sum_k n_k``) needs only the secure sum. Both fleets here return, for every
client whose input is in the sum, a result carrying ``global + sum_k n_k (x_k - global) /
sum_k n_k`` with ``num_examples = sum_k n_k``, so the algorithm's own aggregate gives that mean;
clients that dropped are :class:`ClientFailure` values naming the stage. A round that cannot
finish raises :class:`~fedloom.core.errors.RoundAborted` (the loop retries it with a fresh cohort
while ``cohort.retries`` allow). No train loss is reported: it would be an individual value.

* :class:`SecAggFleet` wraps any simulated fleet: its clients train as usual, then the protocol
  runs in memory over their updates (:func:`~fedloom.secagg.run_in_memory`), with optional
  dropouts per stage; :attr:`SecAggFleet.costs` keeps each round's per-stage costs.
* :class:`GrpcSecAggFleet` drives real clients through user messages
  (:meth:`GrpcFleet.request_each`): they train and keep their update
  (``secagg.train``), then answer the four stages (:mod:`fedloom.runtime.secagg_client`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence

import torch

from fedloom.core.errors import AggregationError, ConfigError, RoundAborted
from fedloom.core.packages import ClientFailure, ClientResult, Downlink, Outcome
from fedloom.fleets.base import Fleet, WrappedFleet
from fedloom.secagg import (
    Quantizer,
    RoundSetup,
    SecAggConfig,
    SecureSum,
    Stage,
    StageCost,
    encode,
)
from fedloom.secagg.ring import Ring
from fedloom.secagg.simulate import run_in_memory

log = logging.getLogger(__name__)

DropPlan = Callable[[int], Mapping[Stage, Collection[int]]]


def common_params(tasks: Sequence[Downlink]) -> torch.Tensor:
    """The one global model every task carries; secure aggregation sums updates from it, so
    per-client models or extras are refused."""
    base = tasks[0].params
    for t in tasks:
        if t.extras or (t.params is not base and not torch.equal(t.params, base)):
            raise AggregationError(f"secure aggregation needs every client to start from one "
                                   f"global model with no extras; client {t.client_id}'s task "
                                   "differs")
    return base


def setup_round(cfg: SecAggConfig, round: int, cohort: Sequence[int], *, seed: int,
                size: int) -> RoundSetup:
    try:
        return RoundSetup.make(cfg, cohort=cohort, round=round, seed=seed, update_size=size)
    except ConfigError as err:
        raise RoundAborted(f"secure aggregation cannot start with {len(cohort)} clients: "
                           f"{err}", round=round, stage="secagg/setup") from None


def secure_outcomes(round: int, base: torch.Tensor, secure: SecureSum,
                    failures: Mapping[int, ClientFailure],
                    steps: Mapping[int, int] | None = None) -> list[Outcome]:
    """Every input client's result carrying the example-weighted mean, and the failures."""
    mean = (base.to(torch.float64) + secure.total / secure.count).to(base.dtype)
    out: dict[int, Outcome] = dict(failures)
    for c in secure.clients:
        out[c] = ClientResult(round=round, client_id=c, params=mean, num_examples=secure.count,
                              num_steps=(steps or {}).get(c, 0))
    return [out[c] for c in sorted(out)]


def log_costs(round: int, costs: Sequence[StageCost]) -> None:
    for c in costs:
        log.info("round %d secagg %s: %d clients, server %.3f s, clients %.3f s, %d B down, "
                 "%d B up", round, c.stage, c.clients, c.server_seconds, c.client_seconds,
                 c.bytes_down, c.bytes_up)


class SecAggFleet(WrappedFleet):
    """``inner``'s clients train; their updates are summed by the protocol in memory.

    Args:
        inner: the simulated fleet the clients train on.
        cfg: the protocol's settings.
        seed: the run's seed (the neighbour graph of round ``r`` is drawn from
            ``(seed, r)``).
        drop: ``drop(round)`` names the clients that stop answering at each stage (tests and
            benchmarks of dropout recovery).
    """

    def __init__(self, inner: Fleet, cfg: SecAggConfig, *, seed: int = 0,
                 drop: DropPlan | None = None) -> None:
        super().__init__(inner)
        self.cfg, self.seed, self.drop = cfg, seed, drop
        self.costs: dict[int, list[StageCost]] = {}

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]:
        if not tasks:
            return []
        base = common_params(tasks)
        failures: dict[int, ClientFailure] = {}
        inputs: dict[int, Ring] = {}
        steps: dict[int, int] = {}
        for o in self.inner.fit(round, tasks):
            if isinstance(o, ClientFailure):
                failures[o.client_id] = o
                continue
            try:
                inputs[o.client_id] = encode(o.params - base, o.num_examples,
                                             Quantizer.of(self.cfg))
                steps[o.client_id] = o.num_steps
            except AggregationError as err:
                failures[o.client_id] = ClientFailure(round=round, client_id=o.client_id,
                                                      stage="secagg/encode", message=str(err))
        setup = setup_round(self.cfg, round, sorted(inputs), seed=self.seed, size=base.numel())
        sim = run_in_memory(setup, inputs, drop=self.drop(round) if self.drop else None)
        self.costs[round] = sim.costs
        log_costs(round, sim.costs)
        for c, (stage, why) in sim.dropped.items():
            failures[c] = ClientFailure(round=round, client_id=c, stage=f"secagg/{stage}",
                                        message=why)
        return secure_outcomes(round, base, sim.sum, failures, steps)



__all__ = ["SecAggFleet", "common_params", "secure_outcomes", "setup_round"]
