"""An averaging algorithm whose mean is replaced by an :class:`~fedloom.aggregators.UpdateRule`.

:class:`Combined` wraps any *reducible* algorithm (one that reads the round's results only
through their example-weighted mean: FedAvg, FedProx, FedAvgM, FedAdam, ...): it stacks the
results' updates (parameters minus the global model) into a ``K x P`` matrix, lets the rule
combine them, and hands the algorithm one result carrying ``global + combined update``, so the
algorithm's own server step (a server learning rate, a server optimiser) steps from it.
Everything else (client half, selection, extras) is the wrapped algorithm's. The rule's state
lives in the server state's extras under ``rule/`` (checkpointed with the run) and its numbers
go into the round's metrics row.

Example:
    >>> from fedloom.algorithms.fedavg import FedAvg
    >>> class Median:
    ...     name = "median"
    ...     def init_extras(self, size): return {}
    ...     def combine(self, round, updates, weights, extras):
    ...         return Combination(update=updates.median(dim=0).values)
    >>> algo = Combined(FedAvg(), Median())
    >>> state = algo.init(torch.zeros(1))
    >>> results = [ClientResult(round=1, client_id=k, params=torch.tensor([v]), num_examples=1,
    ...                         num_steps=1) for k, v in enumerate([1.0, 2.0, 100.0])]
    >>> algo.aggregate(1, state, results).params
    tensor([2.])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedloom.aggregators.rule import Combination, UpdateRule
from fedloom.algorithms.base import Algorithm, Selection
from fedloom.algorithms.wrapped import Wrapped
from fedloom.core.errors import AggregationError, ConfigError
from fedloom.core.packages import ClientConfig, ClientResult, Downlink, ServerState

PREFIX = "rule/"


class Combined(Wrapped):
    """``inner`` with its mean replaced by ``rule`` (see the module docstring)."""

    def __init__(self, inner: Algorithm, rule: UpdateRule) -> None:
        if inner.asynchronous or not inner.reducible:
            raise ConfigError(
                f"{rule.name} replaces the example-weighted mean of an averaging algorithm; "
                f"{inner.name} does not aggregate through that mean (its server step reads "
                "each result), so it cannot be combined with it")
        super().__init__(inner)
        self.rule = rule
        self.reducible = False  # the rule needs every update, never a fleet's pre-reduced mean
        self._metrics: Mapping[str, float] = {}

    def init(self, params: torch.Tensor) -> ServerState:
        state = self.inner.init(params)
        extras = {PREFIX + k: v for k, v in self.rule.init_extras(params.numel()).items()}
        return ServerState(round=state.round, params=state.params,
                           extras={**state.extras, **extras})

    def select(self, round: int, state: ServerState, selection: Selection) -> list[int]:
        return self.inner.select(round, _inner(state), selection)

    def configure(self, round: int, state: ServerState, cohort: Sequence[int],
                  client: ClientConfig) -> list[Downlink]:
        return self.inner.configure(round, _inner(state), cohort, client)

    def aggregate(self, round: int, state: ServerState,
                  results: Sequence[ClientResult]) -> ServerState:
        own = {k[len(PREFIX):]: v for k, v in state.extras.items() if k.startswith(PREFIX)}
        if not results:
            return self.inner.aggregate(round, state, results)
        updates = torch.stack([r.params for r in results]).sub_(state.params)
        weights = torch.tensor([float(r.num_examples) for r in results], dtype=torch.float64)
        out: Combination = self.rule.combine(round, updates, weights, own)
        if out.update.shape != state.params.shape or not bool(torch.isfinite(out.update).all()):
            raise AggregationError(f"round {round}: {self.rule.name} did not give "
                                   f"{state.params.numel()} finite values")
        combined = ClientResult(
            round=round, client_id=results[0].client_id, params=state.params + out.update,
            num_examples=max(1, round_half(out.weight)),
            num_steps=max(r.num_steps for r in results))
        new = self.inner.aggregate(round, _inner(state), [combined])
        self._metrics = dict(out.metrics)
        rule_extras = {PREFIX + k: v for k, v in {**own, **out.extras}.items()}
        return ServerState(round=new.round, params=new.params,
                           extras={**new.extras, **rule_extras})

    def row_metrics(self, state: ServerState) -> Mapping[str, float]:
        return {**self.inner.row_metrics(_inner(state)), **self._metrics}


def round_half(x: float) -> int:
    return int(x + 0.5)


def _inner(state: ServerState) -> ServerState:
    """The state as the wrapped algorithm knows it (without the rule's extras)."""
    if not any(k.startswith(PREFIX) for k in state.extras):
        return state
    return ServerState(round=state.round, params=state.params,
                       extras={k: v for k, v in state.extras.items()
                               if not k.startswith(PREFIX)})


__all__ = ["Combined"]
