"""The serial fleet: clients one after another in this process. The reference for all others."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fedloom.client.trainer import LocalTrainer
from fedloom.core.packages import ClientFailure, Downlink, Outcome

log = logging.getLogger(__name__)


class SerialFleet:
    """Runs every client of the cohort in turn on one :class:`LocalTrainer`.

    A client that raises becomes a :class:`ClientFailure` in the results; the round goes on.
    """

    def __init__(self, trainer: LocalTrainer) -> None:
        self.trainer = trainer

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for task in sorted(tasks, key=lambda t: t.client_id):
            try:
                outcomes.append(self.trainer.fit(task))
            except Exception as exc:  # a failed client is a value, not an escape from the round
                log.warning("client %d failed in round %d: %s", task.client_id, round, exc)
                outcomes.append(ClientFailure(round=round, client_id=task.client_id,
                                              stage="fit", message=f"{type(exc).__name__}: {exc}"))
        return outcomes

    def close(self) -> None:
        pass
