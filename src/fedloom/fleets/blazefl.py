"""Your own per-client function on the serial, thread or process fleet (BlazeFL's contract).

BlazeFL's ``ParallelClientTrainer`` has users write ``process_client`` and call
``local_process(payload, cid_list)`` then ``uplink_package()``. :class:`ClientRunner` is the same
contract on fedloom's worker pools: the function runs as ``fn(ctx, payload, client_id)``, where
``ctx`` gives the worker's device, a generator for ``(seed, round, client_id)`` and the runner's
``data``. With ``kind="process"`` the data reach each worker once and the payload once per call
through shared files (tensors of 64 KiB and more; smaller things are pickled), and large tensors
in the returned packages come back the same way. Results are identical on every kind, since
each client's randomness comes from its own generator.

Example:
    >>> def count(ctx: ClientContext, payload: object, client_id: int) -> int:
    ...     return client_id * int(payload)  # type: ignore[call-overload]
    >>> with ClientRunner(count, kind="serial") as runner:
    ...     runner.local_process(10, [3, 1])
    ...     runner.uplink_package()
    [30, 10]
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

import torch

from fedloom.core.errors import ConfigError
from fedloom.core.packages import ClientFailure
from fedloom.core.rng import torch_generator
from fedloom.fleets.config import FleetConfig, FleetKind
from fedloom.fleets.pools import InlinePool, JobError, Pool, ThreadPool, WorkerLost
from fedloom.fleets.process_pool import ProcessPool
from fedloom.fleets.shm import SharedArena, open_tree, release_tree, share_tree


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientContext:
    """What a client function gets besides the payload: where it runs and its randomness."""

    client_id: int
    round: int
    seed: int
    device: torch.device
    data: object  # the runner's data, mapped once per worker
    worker: int

    def generator(self, purpose: str = "client") -> torch.Generator:
        """The client's own stream for ``(seed, round, client_id, purpose)``."""
        return torch_generator(self.seed, self.round, self.client_id, purpose)


ClientFn = Callable[[ClientContext, object, int], object]


@dataclass(frozen=True, slots=True)
class _Job:
    call: int
    round: int
    client_id: int
    payload: object


@dataclass(frozen=True, slots=True)
class _Factory:
    fn: ClientFn
    data: object
    seed: int
    result_prefix: str | None  # process workers return large tensors through files

    def __call__(self, index: int, device: str) -> _Handler:
        return _Handler(self, index, device)


class _Handler:
    def __init__(self, factory: _Factory, index: int, device: str) -> None:
        self.factory = factory
        self.index = index
        self.device = torch.device(device)
        self.data = open_tree(factory.data)
        prefix = factory.result_prefix
        self.arena = None if prefix is None else SharedArena(
            prefix=f"{prefix}w{index}-{os.getpid()}-", owner=False)
        self.payload: tuple[int, object] = (-1, None)

    def __call__(self, job: object) -> object:
        assert isinstance(job, _Job)
        if self.payload[0] != job.call:
            self.payload = (job.call, open_tree(job.payload))
        ctx = ClientContext(client_id=job.client_id, round=job.round, seed=self.factory.seed,
                            device=self.device, data=self.data, worker=self.index)
        package = self.factory.fn(ctx, self.payload[1], job.client_id)
        return package if self.arena is None else share_tree(package, self.arena)


class ClientRunner:
    """Runs ``process_client`` for each client of a call on a serial, thread or process pool.

    Args:
        process_client: ``fn(ctx, payload, client_id) -> package``; for ``kind="process"`` a
            module-level function or a ``functools.partial`` of one.
        kind: "serial", "thread" or "process".
        workers: threads or processes (default: one per core); BlazeFL's ``num_parallels``.
        data: tensors every client reads (nested in dicts, lists, tuples), shared once.
        seed: the seed of every ``ctx.generator()`` stream.
        share_dir: shared files go here instead of /dev/shm (BlazeFL's ``share_dir``).
        devices: comma-separated devices dealt round-robin to workers ("cpu", "cuda:0,cuda:1").
        threads: torch threads per worker (default 1, for ``serial`` too: the same thread
            count on every kind is what makes their results bitwise equal).
    """

    def __init__(self, process_client: ClientFn, *, kind: str = "process",
                 workers: int | None = None, data: object = None, seed: int = 0,
                 share_dir: str | None = None, devices: str | None = None,
                 threads: int | None = None) -> None:
        kinds = ("serial", "thread", "process")
        if kind not in kinds:
            raise ConfigError(f"kind = {kind!r}: must be one of {', '.join(kinds)}")
        self.cfg = FleetConfig(kind=FleetKind(kind), workers=workers, threads=threads,
                               share_dir=share_dir, devices=devices)
        if kind == "process":
            try:
                pickle.dumps(process_client)
            except Exception as err:
                raise ConfigError(f"process_client = {process_client!r}: cannot be pickled for "
                                  f"spawned workers ({err}); use a module-level function or a "
                                  f"functools.partial of one") from None
        self.fn, self.data, self.seed = process_client, data, seed
        self.cache: list[object] = []
        self.round = 0
        self._calls = 0
        self._pool: Pool | None = None
        self._arena: SharedArena | None = None

    def _open(self) -> Pool:
        if self._pool is not None:
            return self._pool
        cfg, devices = self.cfg, self.cfg.device_list
        workers, threads = cfg.workers or os.cpu_count() or 1, cfg.threads or 1
        if cfg.kind == FleetKind.SERIAL:
            self._pool = InlinePool(_Factory(self.fn, self.data, self.seed, None), devices,
                                    threads)
        elif cfg.kind == FleetKind.THREAD:
            self._pool = ThreadPool(_Factory(self.fn, self.data, self.seed, None),
                                    workers=workers, devices=devices, threads=threads)
        else:
            self._arena = arena = SharedArena(cfg.share_dir)
            factory = _Factory(self.fn, share_tree(self.data, arena), self.seed, arena.prefix)
            try:
                self._pool = ProcessPool(factory, workers=workers, devices=devices,
                                         threads=threads)
            except BaseException:
                self.close()
                raise
        return self._pool

    def local_process(self, payload: object, cid_list: Sequence[int],
                      round: int | None = None) -> None:
        """Run every client of ``cid_list`` on ``payload`` (read only); results go to ``cache``.

        ``round`` (default: one more than the last call's) keys the clients' generators.
        """
        pool = self._open()
        self.round = self.round + 1 if round is None else round
        self._calls += 1
        shared = payload if self._arena is None else share_tree(payload, self._arena)
        try:
            replies = pool.map([_Job(self._calls, self.round, cid, shared) for cid in cid_list])
        except BaseException:  # Ctrl-C or a worker that cannot start: pipes may be mid-message
            self.close()
            raise
        finally:
            if self._arena is not None:
                release_tree(shared)  # the workers have mapped what they needed
        self.cache.extend(self._package(cid, r) for cid, r in zip(cid_list, replies))

    def _package(self, client_id: int, reply: object) -> object:
        if isinstance(reply, JobError | WorkerLost):
            stage = "client" if isinstance(reply, JobError) else "worker"
            return ClientFailure(round=self.round, client_id=client_id, stage=stage,
                                 message=reply.message)
        return reply if self._arena is None else open_tree(reply, unlink=True)

    def uplink_package(self) -> list[object]:
        """The packages of the calls since the last uplink, in call and ``cid_list`` order."""
        packages, self.cache = self.cache, []
        return packages

    def close(self) -> None:
        """Stop the workers and remove the shared files; a later call starts afresh."""
        pool, arena, self._pool, self._arena = self._pool, self._arena, None, None
        if pool is not None:
            pool.close()
        if arena is not None:
            arena.close()

    def __enter__(self) -> ClientRunner:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
