"""The fleet seam: where clients run. Fleets change how clients run, never what they compute."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from fedloom.core.packages import Downlink, Outcome


class Fleet(Protocol):
    """Runs a round's client tasks and returns one outcome per task, sorted by client id."""

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]: ...

    def close(self) -> None: ...
