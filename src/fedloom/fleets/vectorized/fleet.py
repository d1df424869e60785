"""The vectorized fleet: the whole cohort trained as batched computations in this process."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from fedloom.core.packages import Downlink, Outcome
from fedloom.core.threads import torch_threads
from fedloom.fleets.base import FleetBase
from fedloom.fleets.config import FleetConfig
from fedloom.fleets.reduce import WeightedSum, reduces
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
        self.reduces = reduces(cfg, spec)
        self.layout = self.trainer.layout

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]:
        """Every outcome, sorted by client id; reducing (``fleet.aggregation=reduce``), each
        chunk's updates are added to the example-weighted sum as it finishes and every result
        carries the mean (:mod:`fedloom.fleets.reduce`), so one chunk's updates are held at a
        time, not the cohort's."""
        with torch_threads(self.threads):
            if not self.reduces:
                return self.trainer.fit_many(tasks)
            total = WeightedSum(self.layout.size)
            outcomes: list[Outcome] = []
            for chunk in self.trainer.fit_chunks(tasks):
                with torch_threads(1):  # no OpenMP team left spinning beside the next chunk
                    outcomes += total.add(chunk)
        return total.results(sorted(outcomes, key=lambda o: o.client_id), self.layout.dtype)

    def close(self) -> None:
        self.trainer.close()
