"""The serial fleet: clients one after another in this process. The reference for all others."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fedloom.core.packages import ClientFailure, Downlink, Outcome
from fedloom.fleets.base import FleetBase
from fedloom.fleets.config import FleetConfig
from fedloom.training.spec import ClientSpec
from fedloom.training.trainer import LocalTrainer

log = logging.getLogger(__name__)


def fit_one(trainer: LocalTrainer, task: Downlink) -> Outcome:
    """Train one client; an exception becomes a :class:`ClientFailure` value."""
    try:
        return trainer.fit(task)
    except Exception as exc:  # a failed client is a value, not an escape from the round
        log.warning("client %d failed in round %d: %s", task.client_id, task.round, exc)
        return ClientFailure(round=task.round, client_id=task.client_id, stage="fit",
                             message=f"{type(exc).__name__}: {exc}")


class SerialFleet(FleetBase):
    """Runs every client of the cohort in turn on one :class:`LocalTrainer`."""

    def __init__(self, spec: ClientSpec, cfg: FleetConfig | None = None) -> None:
        cfg = cfg or FleetConfig()
        self.trainer = spec.trainer(cfg.device_list[0])

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]:
        return [fit_one(self.trainer, t) for t in sorted(tasks, key=lambda t: t.client_id)]
