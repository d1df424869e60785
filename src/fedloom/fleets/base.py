"""The fleet seam: where clients run. Fleets change how clients run, never what they compute."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from fedloom.core.metrics import Mean
from fedloom.core.packages import Downlink, Outcome


class Fleet(Protocol):
    """Runs a round's client tasks and returns one outcome per task, sorted by client id.

    ``evaluate`` lets a fleet spread central evaluation over its workers; a fleet that returns
    None leaves evaluation to the server, which evaluates in its own process.
    """

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]: ...

    def evaluate(self, params: torch.Tensor) -> dict[str, Mean] | None: ...

    def close(self) -> None: ...
