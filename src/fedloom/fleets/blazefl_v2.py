"""BlazeFL 2.x's client trainers: ``BaseClientTrainer``, ``ProcessPoolClientTrainer``,
``ThreadPoolClientTrainer``, with 2.x's attributes and methods.

BlazeFL 2.x declares these as Protocols that users subclass and fill in: a subclass sets the
attributes itself (``num_parallels``, ``share_dir``, ``device``, ``cache``, ``ipc_mode``,
``stop_event``; it need not call ``super().__init__``) and writes ``worker`` (plus, for the
process pool, ``get_client_config`` and optionally ``prepare_uplink_package_buffer``) and
``uplink_package``. Here they are ABCs, so a subclass missing one of those fails when built.

``ProcessPoolClientTrainer.local_process`` runs the static ``worker`` on fedloom's persistent
:class:`~fedloom.fleets.process_pool.ProcessPool` (started on the first call, reused after):

* ``IPCMode.STORAGE``: the payload goes to ``share_dir/payload.pkl`` and each client's config to
  ``share_dir/<cid>.pkl``; ``worker(config_path, payload_path, device, stop_event)`` returns the
  path of its package.
* ``IPCMode.SHARED_MEMORY``: large payload tensors go through fedloom's shared files
  (:mod:`fedloom.fleets.shm`); the buffer from ``prepare_uplink_package_buffer()`` is mapped by
  parent and worker alike, so ``worker(config, payload, device, stop_event, shm_buffer=...)`` can
  write its tensors into it and return :class:`SHMHandle` in their place.

``ThreadPoolClientTrainer`` calls ``self.worker(cid, device, payload, stop_event)`` on
``num_parallels`` threads. Either way a client that raises fails the call with a
:class:`~fedloom.core.errors.ClientError` naming it; ``progress_fn`` sees the finished results.
"""

from __future__ import annotations

import copy
import threading
from abc import abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Generic, TypeVar, cast

import torch

from fedloom.fleets.blazefl_contract import (
    SerialClientTrainer,
    check_picklable,
    client_device,
    raise_failures,
)
from fedloom.fleets.pools import ThreadPool
from fedloom.fleets.process_pool import ProcessPool
from fedloom.fleets.shm import INLINE_BYTES, SharedArena, SharedRef, release_tree

UplinkPackage = TypeVar("UplinkPackage")
DownlinkPackage = TypeVar("DownlinkPackage")
ClientConfig = TypeVar("ClientConfig")

#: 2.x's name for the bare contract (1.x's ``SerialClientTrainer``).
BaseClientTrainer = SerialClientTrainer


class IPCMode(StrEnum):
    """How a process-pool worker gets its inputs and returns its package."""

    STORAGE = "STORAGE"
    SHARED_MEMORY = "SHARED_MEMORY"


@dataclass(frozen=True)
class SHMHandle:
    """Stands in a returned package for a tensor the worker wrote into its ``shm_buffer``."""


@dataclass(frozen=True, slots=True)
class Finished:
    """A finished client's result, as ``progress_fn`` sees it (``get`` as on ``ApplyResult``,
    ``result`` as on ``Future``)."""

    value: object

    def get(self) -> object:
        return self.value

    def result(self) -> object:
        return self.value

    def ready(self) -> bool:
        return True


#: never copied or walked into: they travel whole
_OPAQUE = (type, torch.Tensor, torch.nn.Module, torch.Generator)


def _walk(obj: object, leaf: Callable[[object], object | None], depth: int = 0) -> object:
    """``obj`` with each leaf replaced where ``leaf`` returns non-None; containers and objects
    with a ``__dict__`` (dataclasses) are copied, never modified."""
    new = leaf(obj)
    if new is not None or depth >= 10:
        return obj if new is None else new
    if isinstance(obj, dict):
        return {k: _walk(v, leaf, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple) and not hasattr(obj, "_fields"):
        return type(obj)(_walk(v, leaf, depth + 1) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, _OPAQUE):
        out = copy.copy(obj)
        out.__dict__.update({k: _walk(v, leaf, depth + 1) for k, v in vars(obj).items()})
        return out
    return obj


def _share(obj: object, arena: SharedArena, min_bytes: int) -> object:
    return _walk(obj, lambda t: arena.share(t.detach().cpu()) if isinstance(t, torch.Tensor)
                 and t.nbytes >= min_bytes else None)


def _open(obj: object) -> object:
    return _walk(obj, lambda r: r.open() if isinstance(r, SharedRef) else None)


def _refs(obj: object) -> list[SharedRef]:
    found: list[SharedRef] = []
    _walk(obj, lambda r: found.append(r) if isinstance(r, SharedRef) else None)
    return found


def _fill(handles: object, buffer: object) -> object:
    """``handles`` with each :class:`SHMHandle` replaced by the tensor at its place in
    ``buffer``."""
    if isinstance(handles, SHMHandle):
        return buffer
    if isinstance(handles, dict) and isinstance(buffer, dict):
        return {k: _fill(v, buffer.get(k)) for k, v in handles.items()}
    if isinstance(handles, list | tuple) and isinstance(buffer, list | tuple):
        return type(handles)(_fill(h, b) for h, b in zip(handles, buffer))
    if hasattr(handles, "__dict__") and not isinstance(handles, _OPAQUE) \
            and hasattr(buffer, "__dict__"):
        out = copy.copy(handles)
        out.__dict__.update({k: _fill(v, getattr(buffer, k, None))
                             for k, v in vars(handles).items()})
        return out
    return handles


@dataclass(frozen=True, slots=True)
class _PoolJob:
    config: object  # a ClientConfig, or its Path (STORAGE)
    payload: object  # the payload with SharedRefs, or its Path (STORAGE)
    device: str
    stop_event: object | None  # None: the worker makes its own (a threading.Event cannot travel)
    shm_buffer: object | None


@dataclass(frozen=True, slots=True)
class _PoolFactory:
    worker: Callable[..., object]

    def __call__(self, index: int, device: str) -> Callable[[object], object]:
        return self.run

    def run(self, job: object) -> object:
        assert isinstance(job, _PoolJob)
        event = threading.Event() if job.stop_event is None else job.stop_event
        if isinstance(job.config, Path):
            return self.worker(job.config, job.payload, job.device, event)
        extra = {} if job.shm_buffer is None else {"shm_buffer": _open(job.shm_buffer)}
        return self.worker(job.config, _open(job.payload), job.device, event, **extra)


class ProcessPoolClientTrainer(BaseClientTrainer[UplinkPackage, DownlinkPackage],
                               Generic[UplinkPackage, DownlinkPackage, ClientConfig]):
    """BlazeFL 2.x's process-pool trainer; see the module docstring.

    Attributes (set by the subclass, as in BlazeFL 2.x):
        num_parallels: worker processes. share_dir: the STORAGE files' directory.
        device: "cpu", "cuda" (clients dealt over GPUs by id) or a device name.
        cache: the packages awaiting ``uplink_package``. ipc_mode: :class:`IPCMode`.
        stop_event: cleared when a call starts and set when it ends (optional here).
        worker_threads: torch threads per worker process (class attribute, default 1).
    """

    num_parallels: int
    share_dir: Path
    device: str
    device_count: int
    cache: list[UplinkPackage]
    ipc_mode: IPCMode = IPCMode.STORAGE
    stop_event: threading.Event
    worker_threads: int = 1
    _fedloom_pool: ProcessPool | None = None
    _fedloom_arena: SharedArena | None = None

    def progress_fn(self, it: list[Finished]) -> Iterable[Finished]:
        """Wrap the finished results (a progress bar, say); the default returns them."""
        return it

    @abstractmethod
    def get_client_config(self, cid: int) -> ClientConfig:
        """What client ``cid``'s worker needs besides the payload."""

    def get_client_device(self, cid: int) -> str:
        """The device client ``cid`` runs on."""
        return client_device(self.device, cid)

    @staticmethod
    @abstractmethod
    def worker(config: ClientConfig | Path, payload: DownlinkPackage | Path, device: str,
               stop_event: threading.Event, *,
               shm_buffer: UplinkPackage | None = None) -> UplinkPackage | Path:
        """In a worker process: train one client; see the module docstring for each mode."""

    def prepare_uplink_package_buffer(self) -> UplinkPackage:
        """An empty package whose tensors a SHARED_MEMORY worker fills (optional)."""
        raise NotImplementedError(f"{type(self).__name__}.prepare_uplink_package_buffer: "
                                  f"not implemented")

    def local_process(self, payload: DownlinkPackage, cid_list: list[int]) -> None:
        """Run ``worker`` for each client of ``cid_list``; packages go to ``cache`` in order."""
        event = getattr(self, "stop_event", None)
        if event is not None:
            event.clear()
        travelling = None if isinstance(event, threading.Event) else event
        arena = self._arena()
        storage = IPCMode(self.ipc_mode) == IPCMode.STORAGE
        buffers: list[object] = []
        if storage:
            torch.save(payload, payload_path := self.share_dir / "payload.pkl")
            shared: object = payload_path
        else:
            shared = _share(payload, arena, INLINE_BYTES)
        jobs = []
        try:
            for cid in cid_list:
                config: object = self.get_client_config(cid)
                buffer = None
                if storage:
                    torch.save(config, path := self.share_dir / f"{cid}.pkl")
                    config = path
                elif self._wants_buffer():
                    buffer = _share(self.prepare_uplink_package_buffer(), arena, 0)
                buffers.append(None if buffer is None else _open(buffer))
                jobs.append(_PoolJob(config, shared, self.get_client_device(cid), travelling,
                                     buffer))
            replies = self._pool().map(jobs)
        except BaseException:
            self.close()
            raise
        finally:
            if event is not None:
                event.set()
            for ref in [*_refs(shared), *(r for j in jobs for r in _refs(j.shm_buffer))]:
                release_tree(ref)  # mapped tensors stay valid
        raise_failures(replies, cid_list, "worker")
        for done, buffer in zip(self.progress_fn([Finished(r) for r in replies]), buffers):
            result = done.get()
            package = torch.load(result, weights_only=False) if isinstance(result, Path) \
                else _fill(result, buffer)
            self.cache.append(package)  # type: ignore[arg-type]

    def _wants_buffer(self) -> bool:
        return type(self).prepare_uplink_package_buffer \
            is not ProcessPoolClientTrainer.prepare_uplink_package_buffer

    def _arena(self) -> SharedArena:
        arena = self._fedloom_arena
        if arena is None:
            arena = self._fedloom_arena = SharedArena()
        return arena

    def _pool(self) -> ProcessPool:
        pool = self._fedloom_pool
        if pool is None:
            fn = type(self).worker
            check_picklable(fn, f"{type(self).__qualname__}.worker")
            pool = self._fedloom_pool = ProcessPool(
                _PoolFactory(fn), workers=self.num_parallels, devices=["cpu"],
                threads=self.worker_threads)
        return pool

    def close(self) -> None:
        """Stop the worker processes and remove the shared files; a later call starts afresh."""
        pool, arena = self._fedloom_pool, self._fedloom_arena
        self._fedloom_pool, self._fedloom_arena = None, None
        if pool is not None:
            pool.close()
        if arena is not None:
            arena.close()


class ThreadPoolClientTrainer(BaseClientTrainer[UplinkPackage, DownlinkPackage]):
    """BlazeFL 2.x's thread-pool trainer: ``worker`` runs on ``num_parallels`` threads.

    Attributes (set by the subclass): num_parallels, device, cache, stop_event (optional).
    """

    num_parallels: int
    device: str
    device_count: int
    cache: list[UplinkPackage]
    stop_event: threading.Event

    def progress_fn(self, it: list[Finished]) -> Iterable[Finished]:
        """Wrap the finished results (a progress bar, say); the default returns them."""
        return it

    @abstractmethod
    def worker(self, cid: int, device: str, payload: DownlinkPackage,
               stop_event: threading.Event) -> UplinkPackage:
        """In a thread: train client ``cid`` on ``payload`` and return its package."""

    def get_client_device(self, cid: int) -> str:
        """The device client ``cid`` runs on."""
        return client_device(self.device, cid)

    def local_process(self, payload: DownlinkPackage, cid_list: list[int]) -> None:
        """Run ``worker`` for each client of ``cid_list``; packages go to ``cache`` in order."""
        event = getattr(self, "stop_event", None) or threading.Event()
        event.clear()

        def factory(index: int, device: str) -> Callable[[object], object]:
            def run(job: object) -> object:
                cid = cast(int, job)
                return self.worker(cid, self.get_client_device(cid), payload, event)
            return run

        pool = ThreadPool(factory, workers=self.num_parallels, devices=["cpu"],
                          threads=torch.get_num_threads())
        try:
            replies = pool.map(cid_list)
        finally:
            event.set()
            pool.close()
        raise_failures(replies, cid_list, "worker")
        self.cache.extend(done.get() for done in  # type: ignore[misc]
                          self.progress_fn([Finished(r) for r in replies]))
