"""BlazeFL 1.x's client trainers as documented: subclass, write two methods, call two.

``SerialClientTrainer`` is the bare contract (``local_process`` and ``uplink_package``).
``ParallelClientTrainer`` is BlazeFL's disk protocol: for each client, ``get_shared_data(cid,
payload)`` is saved with ``torch.save`` to ``share_dir/<cid>.pkl``; a worker process runs the
static ``process_client(path, device)`` (or 0.1.x's ``process_client(path)``), which reads that
file and returns the path of its result; the parent loads each result into ``cache`` in
``cid_list`` order and ``uplink_package()`` hands the cache over.

The workers are fedloom's :class:`~fedloom.fleets.process_pool.ProcessPool`: spawned once, on the
first call, and reused by every later call (BlazeFL starts a new pool per call), replaced if one
dies. A client whose ``process_client`` raises, or whose worker dies, fails the call with a
:class:`~fedloom.core.errors.ClientError` naming the client and the cause; nothing of that call
reaches ``cache``. Each worker runs torch on ``worker_threads`` threads (1 by default), so
results do not depend on ``num_parallels``.

For tensors that need not touch the disk, :class:`fedloom.fleets.blazefl.ClientRunner` is the
in-memory form of the same contract.

Example (the subclass must live in an importable module, and a script needs an
``if __name__ == "__main__":`` guard, as with BlazeFL)::

    class Squares(ParallelClientTrainer[int, int, dict[str, int]]):
        def get_shared_data(self, cid: int, payload: int) -> dict[str, int]:
            return {"cid": cid, "payload": payload}

        @staticmethod
        def process_client(path: Path, device: str) -> Path:
            data = torch.load(path, weights_only=False)
            torch.save(data["cid"] ** 2 + data["payload"], path)
            return path

    with Squares(num_parallels=2, share_dir=Path("/tmp/share"), device="cpu") as trainer:
        trainer.local_process(10, [1, 2, 3])
        trainer.uplink_package()  # [11, 14, 19]
"""

from __future__ import annotations

import inspect
import os
import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Generic, TypeVar

import torch

from fedloom.core.errors import ClientError, ConfigError
from fedloom.fleets.pools import JobError, WorkerLost
from fedloom.fleets.process_pool import ProcessPool

UplinkPackage = TypeVar("UplinkPackage")
DownlinkPackage = TypeVar("DownlinkPackage")
DiskSharedData = TypeVar("DiskSharedData")


class SerialClientTrainer(ABC, Generic[UplinkPackage, DownlinkPackage]):
    """The client side of a BlazeFL round: process a cohort, then hand its packages over."""

    @abstractmethod
    def uplink_package(self) -> list[UplinkPackage]:
        """The packages of the clients processed since the last call."""

    @abstractmethod
    def local_process(self, payload: DownlinkPackage, cid_list: list[int]) -> None:
        """Run every client of ``cid_list`` on the server's ``payload``."""


def raise_failures(replies: Sequence[object], cid_list: Sequence[int], what: str) -> None:
    """Raise a :class:`ClientError` for the first failed reply, naming its client and cause."""
    for cid, reply in zip(cid_list, replies):
        if isinstance(reply, JobError):
            raise ClientError(f"{what} failed for client {cid}: {reply.message}",
                              client_id=cid, stage="client")
        if isinstance(reply, WorkerLost):
            raise ClientError(f"{what} for client {cid}: worker lost: {reply.message}",
                              client_id=cid, stage="worker")


def client_device(device: str, cid: int) -> str:
    """BlazeFL's placement: ``device="cuda"`` deals clients round-robin over the GPUs."""
    count = torch.cuda.device_count() if device == "cuda" else 0
    return f"cuda:{cid % count}" if count else device


def check_picklable(fn: Callable[..., object], owner: str) -> None:
    try:
        pickle.dumps(fn)
    except Exception as err:
        raise ConfigError(f"{owner}: cannot be pickled for spawned worker processes ({err}); "
                          f"define the class at module level of an importable module") from None


@dataclass(frozen=True, slots=True)
class _DiskJob:
    cid: int
    path: Path
    device: str


@dataclass(frozen=True, slots=True)
class _DiskFactory:
    process_client: Callable[..., object]
    with_device: bool  # 1.x passes (path, device); 0.1.x passes (path)

    def __call__(self, index: int, device: str) -> Callable[[object], object]:
        return self.run

    def run(self, job: object) -> object:
        assert isinstance(job, _DiskJob)
        args = (job.path, job.device) if self.with_device else (job.path,)
        result = self.process_client(*args)
        if not isinstance(result, str | os.PathLike):
            raise TypeError(f"process_client returned {type(result).__name__}, not the Path "
                            f"of its result file")
        return Path(result)


class ParallelClientTrainer(SerialClientTrainer[UplinkPackage, DownlinkPackage],
                            Generic[UplinkPackage, DownlinkPackage, DiskSharedData]):
    """BlazeFL 1.x's parallel trainer over files in ``share_dir``; see the module docstring.

    Args:
        num_parallels: worker processes (BlazeFL's pool size).
        share_dir: where each client's shared data and result files go (created if missing).
        device: "cpu", "cuda" (clients dealt over the GPUs by id) or a device name; BlazeFL
            0.1.x had no such argument, so it defaults to "cpu".

    Attributes:
        num_parallels, share_dir, device, cache: as in BlazeFL.
        worker_threads: torch threads per worker process (class attribute, default 1).
    """

    worker_threads: int = 1

    def __init__(self, num_parallels: int, share_dir: Path, device: str = "cpu") -> None:
        if isinstance(num_parallels, bool) or not isinstance(num_parallels, int) \
                or num_parallels < 1:
            raise ConfigError(f"num_parallels = {num_parallels!r}: must be a positive integer")
        self.num_parallels = num_parallels
        self.share_dir = Path(share_dir)
        self.share_dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.device_count = torch.cuda.device_count() if device == "cuda" else 0
        self.cache: list[UplinkPackage] = []
        self._pool: ProcessPool | None = None

    @abstractmethod
    def get_shared_data(self, cid: int, payload: DownlinkPackage) -> DiskSharedData:
        """What client ``cid``'s worker needs; saved to ``share_dir/<cid>.pkl``."""

    @staticmethod
    @abstractmethod
    def process_client(path: Path, device: str) -> Path:
        """In a worker: read the shared data at ``path``, train, save the package, return its
        path (BlazeFL 0.1.x's one-argument ``process_client(path)`` is accepted too)."""

    def get_client_device(self, cid: int) -> str:
        """The device client ``cid`` runs on."""
        return client_device(self.device, cid)

    def local_process(self, payload: DownlinkPackage, cid_list: list[int]) -> None:
        """Write each client's shared data, run ``process_client`` on the workers and load the
        results into ``cache`` in ``cid_list`` order."""
        jobs = []
        for cid in cid_list:
            path = self.share_dir / f"{cid}.pkl"
            torch.save(self.get_shared_data(cid, payload), path)
            jobs.append(_DiskJob(cid, path, self.get_client_device(cid)))
        pool = self._workers()
        try:
            replies = pool.map(jobs)
        except BaseException:  # Ctrl-C or a worker that cannot start
            self.close()
            raise
        raise_failures(replies, cid_list, "process_client")
        self.cache.extend(torch.load(r, weights_only=False) for r in replies
                          if isinstance(r, Path))

    def uplink_package(self) -> list[UplinkPackage]:
        """The cached packages, in call and ``cid_list`` order; the cache is emptied."""
        packages, self.cache = self.cache, []
        return packages

    def _workers(self) -> ProcessPool:
        if getattr(self, "_pool", None) is None:
            fn = type(self).process_client
            check_picklable(fn, f"{type(self).__qualname__}.process_client")
            params = inspect.signature(fn).parameters.values()
            positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY,
                                                          p.POSITIONAL_OR_KEYWORD)]
            factory = _DiskFactory(fn, with_device=len(positional) != 1)
            self._pool = ProcessPool(factory, workers=self.num_parallels, devices=["cpu"],
                                     threads=self.worker_threads)
        assert self._pool is not None
        return self._pool

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones); files stay in share_dir."""
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            pool.close()

    def __enter__(self) -> ParallelClientTrainer[UplinkPackage, DownlinkPackage, DiskSharedData]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
