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
from fedloom.core.finite import all_finite
from fedloom.core.packages import ClientFailure, ClientResult, Outcome, checked
from fedloom.fleets.config import AggregationMode, FleetConfig
from fedloom.training.spec import ClientSpec

log = logging.getLogger(__name__)

#: what a result carries between being added and the mean (its own update is dropped)
PENDING = torch.empty(0)


def _matrices(rows: list[torch.Tensor]) -> list[tuple[int, torch.Tensor]]:
    """``rows`` as (first index, (n, P) matrix) pieces: each run of consecutive rows of one
    tensor (a vectorized chunk's part, a process job's slab rows) a view of it, any other row
    a one-row view of itself. Nothing is copied."""
    out: list[tuple[int, torch.Tensor]] = []
    start = 0
    for i in range(1, len(rows) + 1):
        if i < len(rows) and _follows(rows[i - 1], rows[i]):
            continue
        first = rows[start]
        size = first.numel()
        if all(r.dim() == 1 and r.is_contiguous() for r in rows[start:i]):
            out.append((start, first.as_strided((i - start, size), (size, 1))))
        else:
            out.append((start, torch.stack(rows[start:i])))
        start = i
    return out


def _follows(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``b`` is the row right after ``a`` in one tensor's memory."""
    return (a.dim() == b.dim() == 1 and a.is_contiguous() and b.is_contiguous()
            and a.numel() == b.numel() and a.dtype == b.dtype
            and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
            and b.storage_offset() == a.storage_offset() + a.numel())


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
        (a result's ``params`` is a placeholder until :meth:`results`).

        One pass over the updates: their weighted sum is computed first, and only when it is
        not finite (a NaN or infinity in some update always reaches it) is each update checked
        and the sum taken again without the bad ones."""
        out = [o if isinstance(o, ClientFailure) or o.params.shape == (self.size,)
               else checked(o, self.size) for o in outcomes]
        part = self._weighted([o for o in out if isinstance(o, ClientResult)])
        if part is not None and not all_finite(part):
            out = [checked(o, self.size) for o in out]
            part = self._weighted([o for o in out if isinstance(o, ClientResult)])
        if part is not None:
            count = float(sum(o.num_examples for o in out if isinstance(o, ClientResult)))
            self.sums[:self.size].add_(part, alpha=count)
            self.sums[self.size] += count
        return [dataclasses.replace(o, params=PENDING) if isinstance(o, ClientResult) else o
                for o in out]

    def _weighted(self, usable: list[ClientResult]) -> torch.Tensor | None:
        """``usable``'s example-weighted mean (weights <= 1, so no float32 overflow that the
        updates themselves do not have), one matrix-vector product per run of rows that lie
        together in memory; None if there are none or their counts sum to 0 (nothing added)."""
        counts = [float(o.num_examples) for o in usable]
        if not usable or sum(counts) <= 0:
            return None
        weights = torch.tensor(counts, dtype=torch.float64, device=self.sums.device)
        weights = (weights / weights.sum()).to(usable[0].params.dtype)
        rows = [o.params.to(self.sums.device) for o in usable]
        total: torch.Tensor | None = None
        for i, m in _matrices(rows):
            piece = torch.mv(m.t(), weights[i:i + m.shape[0]])
            total = piece if total is None else total.add_(piece)
        return total

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
