"""``fleet.aggregation=reduce``: a reducible algorithm's updates summed as they arrive.

A reducible algorithm (FedAvg, FedProx, FedOpt) reads the cohort's updates only through their
example-weighted mean ``sum_k n_k x_k / sum_k n_k``. A fleet in reduce mode adds each batch of
updates (a chunk, a rank's share) to that sum as soon as it exists (one float32 matrix-vector
product, accumulated in float64) and keeps nothing of them: the K x P updates a round
would otherwise hold until aggregation (800 MB for 1,000 clients of the 2NN) never coexist.
Every result it returns carries the mean, rounded to the parameter dtype once, as its
``params`` (one tensor, which the aggregate averages to itself). Only float32 rounding of the
exact weighted sum separates it from exact mode. An update with the wrong shape or a
non-finite value becomes a :class:`ClientFailure` (stage ``validate``) before it is added.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

import torch

from fedloom.core.errors import AggregationError
from fedloom.core.packages import ClientResult, Outcome, checked
from fedloom.fleets.config import AggregationMode, FleetConfig
from fedloom.training.spec import ClientSpec

log = logging.getLogger(__name__)

#: what a result carries between being added and the mean (its own update is dropped)
PENDING = torch.empty(0)


def reduces(cfg: FleetConfig, spec: ClientSpec) -> bool:
    """Whether a fleet built from ``cfg`` reduces: ``fleet.aggregation=reduce`` and a reducible
    algorithm (otherwise exact aggregation, with a warning)."""
    if cfg.aggregation != AggregationMode.REDUCE:
        return False
    if not spec.reducible:
        log.warning("fleet.aggregation = reduce: the algorithm is not reducible (its aggregate "
                    "is not an example-weighted mean); aggregating exactly instead")
    return spec.reducible


class WeightedSum:
    """``sum_k n_k x_k`` and ``sum_k n_k`` (float64) of the results added so far.

    Args:
        size: the model's number of values.
        device: where the sum lives.
    """

    def __init__(self, size: int, device: str | torch.device = "cpu") -> None:
        self.size = size
        #: ``[sum_k n_k x_k, sum_k n_k]``: one tensor, so a collective can reduce both at once
        self.sums = torch.zeros(size + 1, dtype=torch.float64, device=device)

    def add(self, outcomes: Iterable[Outcome]) -> list[Outcome]:
        """Add each usable result's update; the outcomes back, checked, their updates dropped
        (a result's ``params`` is a placeholder until :meth:`results`)."""
        out = [checked(o, self.size) for o in outcomes]
        usable = [o for o in out if isinstance(o, ClientResult)]
        if usable:  # one matrix-vector product (float32) per call, added in float64
            weights = torch.tensor([float(o.num_examples) for o in usable],
                                   dtype=usable[0].params.dtype, device=self.sums.device)
            stacked = torch.stack([o.params.to(self.sums.device) for o in usable])
            self.sums[:self.size] += torch.mv(stacked.t(), weights)
            self.sums[self.size] += float(sum(o.num_examples for o in usable))
        return [dataclasses.replace(o, params=PENDING) if isinstance(o, ClientResult) else o
                for o in out]

    def mean(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The example-weighted mean in ``dtype``, on the CPU (None when nothing was added)."""
        total = float(self.sums[self.size])
        return None if total <= 0 else (self.sums[:self.size] / total).to("cpu", dtype)

    def results(self, outcomes: Iterable[Outcome], dtype: torch.dtype) -> list[Outcome]:
        """``outcomes`` (from :meth:`add`, or merged from several sums) with every result
        carrying the mean.

        Raises:
            AggregationError: there are results but their example counts sum to 0.
        """
        outcomes = list(outcomes)
        mean = self.mean(dtype)
        if mean is None:
            if any(isinstance(o, ClientResult) for o in outcomes):
                raise AggregationError("reduce: the results' num_examples sum to 0; the "
                                       "example-weighted mean is undefined")
            return outcomes
        return [dataclasses.replace(o, params=mean) if isinstance(o, ClientResult) else o
                for o in outcomes]
