"""The vectorized fleet: the whole cohort trained as batched computations in this process."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from fedloom.core.packages import Downlink, Outcome
from fedloom.core.threads import torch_threads
from fedloom.fleets.base import FleetBase
from fedloom.fleets.config import FleetConfig
from fedloom.fleets.vectorized.trainer import VectorizedTrainer
from fedloom.training.spec import ClientSpec


class VectorizedFleet(FleetBase):
    """Stacks the cohort's clients (``fleet.chunk`` at a time) on ``fleet.devices``' first device.

    One process, so it uses ``fleet.threads`` cores (default: every core): on CPU, as that many
    parts of each chunk trained at once on one torch thread each (where the algorithm's client
    half allows: :class:`VectorizedTrainer`'s ``parallel``), otherwise as torch threads. Its
    steps are compiled as ``fleet.compile`` says (seconds spent: ``trainer.compiler.seconds``).

    Raises:
        ConfigError: the model has a layer that cannot be vectorized (named in the message).
    """

    def __init__(self, spec: ClientSpec, cfg: FleetConfig | None = None) -> None:
        cfg = cfg or FleetConfig()
        self.threads = cfg.threads
        device = torch.device(cfg.device_list[0])
        parallel = (cfg.threads or os.cpu_count() or 1) if device.type == "cpu" else 1
        self.trainer = VectorizedTrainer(spec, device, cfg.chunk, compile=cfg.compile,
                                         parallel=parallel)

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]:
        with torch_threads(self.threads):
            return self.trainer.fit_many(tasks)

    def close(self) -> None:
        self.trainer.close()
