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

from fedloom.core.counts import LARGE_POPULATION
from fedloom.core.rng import SERVER, Purpose, numpy_generator
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
    """Simulated seconds per local step for every client, fixed for the run.

    ``constant`` holds nothing per client. The random speed models draw every client's speed
    from one seeded stream into an array (8 bytes per client) up to
    :data:`~fedloom.core.counts.LARGE_POPULATION` clients; above it ``step_time`` is None
    and client ``k``'s speed is the first draw of its own stream ``(seed, k)``, made when asked
    for, so a million registered clients cost nothing here (and each keeps its speed all run).
    """

    def __init__(self, cfg: ClockConfig, *, num_clients: int, seed: int) -> None:
        self.cfg, self.seed = cfg, seed
        self.step_time: np.ndarray | None = None
        if cfg.speed != SpeedModel.CONSTANT and num_clients <= LARGE_POPULATION:
            self.step_time = self._draw(numpy_generator(seed, 0, SERVER, Purpose.SPEED),
                                        num_clients)

    def _draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        if self.cfg.speed == SpeedModel.LOGNORMAL:
            return rng.lognormal(0.0, self.cfg.sigma, count)
        return 1.0 + rng.pareto(self.cfg.shape, count)

    def step_seconds(self, client_id: int) -> float:
        """Client ``client_id``'s simulated seconds per local step."""
        if self.cfg.speed == SpeedModel.CONSTANT:
            return 1.0
        if self.step_time is not None:
            return float(self.step_time[client_id])
        return float(self._draw(numpy_generator(self.seed, 0, client_id, Purpose.SPEED), 1)[0])

    def duration(self, client_id: int, num_steps: int) -> float:
        return self.step_seconds(client_id) * num_steps
