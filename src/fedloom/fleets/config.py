"""The ``fleet`` section of a run config: where clients run."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fedloom.core.validate import Problems


class FleetKind(StrEnum):
    SERIAL = "serial"  # in this process, one client after another (the reference)
    THREAD = "thread"  # a thread pool
    PROCESS = "process"  # persistent worker processes with shared memory
    VECTORIZED = "vectorized"  # many clients as one batched torch.func computation
    DISTRIBUTED = "distributed"  # ranks under torchrun (torch.distributed)


class AggregationMode(StrEnum):
    EXACT = "exact"  # gather every update, aggregate sorted by client id: bitwise reproducible
    REDUCE = "reduce"  # linear aggregations summed as updates arrive: less memory, within 1e-6


class CompileMode(StrEnum):
    AUTO = "auto"  # CUDA only: measured slower on CPU; expected (not measured) to pay on CUDA
    ON = "on"  # torch.compile every recorded step (eager, with a warning, where it fails)
    OFF = "off"  # replay the recorded steps eagerly


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetConfig:
    """Where clients run.

    Attributes:
        kind: the fleet.
        workers: worker processes or threads (default: one per core).
        threads: torch threads per worker; default all cores for ``serial`` and ``vectorized``
            (one process), 1 for each worker of ``process`` and ``thread``.
        share_dir: put shared buffers in files under this directory instead of /dev/shm.
        chunk: most clients stacked at once by the vectorized fleet (memory bound).
        devices: comma-separated devices assigned round-robin to workers/ranks ("cpu",
            "cuda:0,cuda:1"); default cpu, or one GPU per rank under torchrun when CUDA exists.
        vectorize: the process and distributed fleets vectorize their own share of the cohort.
        aggregation: ``exact`` (every update kept, aggregated in client-id order) or
            ``reduce`` (the distributed, vectorized and process fleets sum a reducible
            algorithm's updates as they arrive: :mod:`fedloom.fleets.reduce`).
        compile: the vectorized fleet's steps through ``torch.compile`` (:class:`CompileMode`).
    """

    kind: FleetKind = FleetKind.SERIAL
    workers: int | None = None
    threads: int | None = None
    share_dir: str | None = None
    chunk: int | None = None
    devices: str | None = None
    vectorize: bool = False
    aggregation: AggregationMode = AggregationMode.EXACT
    compile: CompileMode = CompileMode.AUTO

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.workers is None or self.workers >= 1, "workers", self.workers,
                "must be >= 1 or null (one per core)")
        p.check(self.threads is None or self.threads >= 1, "threads", self.threads,
                "must be >= 1 or null")
        p.check(self.chunk is None or self.chunk >= 1, "chunk", self.chunk,
                "must be >= 1 or null (all clients at once)")
        p.check(not self.vectorize or self.kind in (FleetKind.PROCESS, FleetKind.DISTRIBUTED),
                "vectorize", self.vectorize, "only the process and distributed fleets take it")
        p.check(self.aggregation == AggregationMode.EXACT
                or self.kind in (FleetKind.DISTRIBUTED, FleetKind.VECTORIZED, FleetKind.PROCESS),
                "aggregation", self.aggregation,
                "reduce: only the distributed, vectorized and process fleets take it")
        p.raise_if_any()

    @property
    def device_list(self) -> list[str]:
        return [d.strip() for d in (self.devices or "cpu").split(",") if d.strip()]
