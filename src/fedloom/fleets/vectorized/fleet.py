"""The vectorized fleet: the whole cohort trained as batched computations in this process."""

from __future__ import annotations

from collections.abc import Sequence

from fedloom.core.packages import Downlink, Outcome
from fedloom.core.threads import torch_threads
from fedloom.fleets.base import FleetBase
from fedloom.fleets.config import FleetConfig
from fedloom.fleets.vectorized.trainer import VectorizedTrainer
from fedloom.training.spec import ClientSpec


class VectorizedFleet(FleetBase):
    """Stacks the cohort's clients (``fleet.chunk`` at a time) on ``fleet.devices``' first device.

    One process, so it uses ``fleet.threads`` torch threads (default: every core); its steps
    are compiled as ``fleet.compile`` says (seconds spent: ``trainer.compiler.seconds``).

    Raises:
        ConfigError: the model has a layer that cannot be vectorized (named in the message).
    """

    def __init__(self, spec: ClientSpec, cfg: FleetConfig | None = None) -> None:
        cfg = cfg or FleetConfig()
        self.threads = cfg.threads
        self.trainer = VectorizedTrainer(spec, cfg.device_list[0], cfg.chunk,
                                         compile=cfg.compile)

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]:
        with torch_threads(self.threads):
            return self.trainer.fit_many(tasks)
