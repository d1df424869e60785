"""A simulated clock: how long each client takes, so runs can be compared in simulated time.

Each client gets a fixed speed, drawn once from a configurable distribution with its own random
stream; a client's local work takes ``num_steps * step_time[client]`` simulated seconds.
Heavy-tailed speeds (``pareto``) make a few clients very slow, the case where synchronous rounds
wait on stragglers and asynchronous aggregation pays off.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from fedloom.core.rng import Purpose, numpy_generator
from fedloom.core.validate import Problems


class SpeedModel(StrEnum):
    CONSTANT = "constant"  # every client's step takes 1 simulated second
    LOGNORMAL = "lognormal"  # step time ~ lognormal(0, sigma)
    PARETO = "pareto"  # step time ~ 1 + Pareto(shape): heavy tailed


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockConfig:
    """The ``clock`` section: client speeds, and how many clients train at once and which
    (async)."""

    speed: SpeedModel = SpeedModel.CONSTANT
    sigma: float = 1.0
    shape: float = 1.5
    concurrency: int = 10
    selector: str = "random"  # which idle clients start: random | round_robin (FLSim's)

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.selector in ("random", "round_robin"), "selector", self.selector,
                "must be random or round_robin")
        p.check(self.sigma >= 0, "sigma", self.sigma, "must be >= 0")
        p.check(self.shape > 0, "shape", self.shape, "must be > 0")
        p.check(self.concurrency >= 1, "concurrency", self.concurrency, "must be >= 1")
        p.raise_if_any()


class ClientClock:
    """Simulated seconds per local step for every client, fixed for the run (one float64 per
    client for the random speed models; nothing per client for ``constant``)."""

    def __init__(self, cfg: ClockConfig, *, num_clients: int, seed: int) -> None:
        rng = numpy_generator(seed, 0, -1, Purpose.SPEED)
        self.step_time: np.ndarray | None = None
        if cfg.speed == SpeedModel.LOGNORMAL:
            self.step_time = rng.lognormal(0.0, cfg.sigma, num_clients)
        elif cfg.speed == SpeedModel.PARETO:
            self.step_time = 1.0 + rng.pareto(cfg.shape, num_clients)

    def duration(self, client_id: int, num_steps: int) -> float:
        step = 1.0 if self.step_time is None else float(self.step_time[client_id])
        return step * num_steps
