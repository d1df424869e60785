"""Power-of-choice client selection (Cho, Wang, Joshi, 2020/AISTATS 2022: ``pow-d``).

Each round the run's sampler draws ``d`` candidates (the paper samples them without
replacement in proportion to their data: ``cohort.sampler: weighted``); every candidate reports
its loss ``F_k(w)`` at the current global model, and the ``cohort.size`` candidates with the
highest losses train (ties go to the lower client id; a candidate that cannot report counts
last). Biasing selection towards high-loss clients speeds up convergence, at the price of a
small bias in the solution that ``d`` controls (``d = cohort.size`` is plain sampling). The
server step is the paper's: the unweighted mean of the selected clients' models.

In a simulation the losses are computed on the server's copy of the candidates' data; in a
deployment each candidate evaluates the model on its own data.

Example:
    >>> # fedloom run CONFIG algorithm.name=powd algorithm.d=30 cohort.size=10 \\
    >>> #     cohort.sampler=weighted
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fedloom.algorithms.aggregate import weighted_mean
from fedloom.algorithms.base import Base, Selection
from fedloom.algorithms.registry import AlgorithmContext, register
from fedloom.core.packages import ClientResult, ServerState
from fedloom.core.validate import Problems


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerOfChoiceOptions:
    """``d``: candidates drawn per round (at least ``cohort.size`` are drawn)."""

    d: int = 20

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.d >= 1, "d", self.d, "must be >= 1")
        p.raise_if_any()


def highest_losses(candidates: Sequence[int], losses: dict[int, float], m: int) -> list[int]:
    """The ``m`` candidates with the highest losses, sorted by client id (ties: lower id
    first; a candidate without a loss after every candidate with one)."""
    ranked = sorted(candidates, key=lambda c: (-losses.get(c, -math.inf), c))
    return sorted(ranked[:m])


class PowerOfChoice(Base):
    """pow-d: sample ``d`` candidates, train the ``cohort.size`` with the highest local loss."""

    name = "powd"

    def __init__(self, options: PowerOfChoiceOptions | None = None) -> None:
        self.options = options or PowerOfChoiceOptions()

    def select(self, round: int, state: ServerState, selection: Selection) -> list[int]:
        m = selection.size
        candidates = selection.sample(max(self.options.d, m))
        if len(candidates) <= m:
            return candidates
        return highest_losses(candidates, selection.losses(candidates), m)

    def aggregate(self, round: int, state: ServerState,
                  results: Sequence[ClientResult]) -> ServerState:
        if not results:
            return ServerState(round=round, params=state.params, extras=state.extras)
        mean = weighted_mean([r.params for r in results], [1.0] * len(results))
        return ServerState(round=round, params=mean, extras=state.extras)


@register("powd", PowerOfChoiceOptions)
def _build(options: PowerOfChoiceOptions, context: AlgorithmContext) -> PowerOfChoice:
    return PowerOfChoice(options)
