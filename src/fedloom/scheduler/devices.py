"""Where tasks train: GPUs chosen by measured free memory, or CPU slots.

Free memory is measured through NVML (NVIDIA's ``nvidia-ml-py`` binding, the ``gpu`` extra),
imported only when a scheduler starts and optional: without it, or without a driver, tasks run
in CPU slots. Anything that implements the small :class:`Nvml` protocol can stand in for it; the
tests use a fake with GPUs of given free memory.

A task placed on a GPU reserves its memory estimate until its process has allocated it: what a
GPU can still take is its measured free memory minus, for every task placed there, the part of
its estimate that NVML does not yet see that task's process using.

Example:
    >>> pool = DevicePool(nvml=None, cpu_slots=2)
    >>> pool.place("a", memory=None, pinned=None, pid=101), pool.place("b", memory=None,
    ...     pinned=None, pid=102), pool.place("c", memory=None, pinned=None, pid=103)
    ('cpu', 'cpu', None)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol

log = logging.getLogger(__name__)

#: CPU slots when none are given: tasks at once on a machine without GPUs.
DEFAULT_CPU_SLOTS = 2
#: The least free memory a GPU needs to take a task whose size is not known yet.
MIN_PROBE_BYTES = 1 << 30


class Nvml(Protocol):
    """What the scheduler asks of NVML (indices are CUDA ordinals: ``cuda:{index}``)."""

    def device_count(self) -> int: ...

    def memory(self, index: int) -> tuple[int, int]:
        """Free and total memory of GPU ``index``, in bytes."""
        ...

    def process_memory(self, index: int) -> Mapping[int, int]:
        """GPU memory in use on GPU ``index`` by each process id (empty when unknown)."""
        ...


class PynvmlNvml:
    """:class:`Nvml` over ``pynvml`` (from ``nvidia-ml-py``), honouring CUDA_VISIBLE_DEVICES."""

    def __init__(self, pynvml: ModuleType) -> None:
        pynvml.nvmlInit()
        self._nvml = pynvml
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                             for i in range(pynvml.nvmlDeviceGetCount())]
        else:
            self._handles = [
                pynvml.nvmlDeviceGetHandleByUUID(v) if v.startswith(("GPU-", "MIG-"))
                else pynvml.nvmlDeviceGetHandleByIndex(int(v))
                for v in (s.strip() for s in visible.split(",")) if v and v != "-1"]

    def device_count(self) -> int:
        return len(self._handles)

    def memory(self, index: int) -> tuple[int, int]:
        info = self._nvml.nvmlDeviceGetMemoryInfo(self._handles[index])
        return int(info.free), int(info.total)

    def process_memory(self, index: int) -> Mapping[int, int]:
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handles[index])
        except self._nvml.NVMLError:
            return {}
        return {int(p.pid): int(p.usedGpuMemory or 0) for p in procs}


def open_nvml() -> Nvml | None:
    """NVML when ``pynvml`` is installed and a driver answers; else None (CPU slots only)."""
    try:
        import pynvml
    except ImportError:
        log.debug("pynvml is not installed (pip install 'fedloom[gpu]'): CPU slots only")
        return None
    try:
        return PynvmlNvml(pynvml)
    except (pynvml.NVMLError, ValueError) as err:
        log.info("NVML is not available (%s): CPU slots only", err)
        return None


@dataclass(slots=True)
class _Placement:
    device: str
    memory: int  # bytes reserved on a GPU; 0 on the CPU
    pid: int | None


class DevicePool:
    """Hands out devices to tasks: several per GPU where their memory fits, else CPU slots.

    Args:
        nvml: GPU memory probe; None: no GPUs.
        cpu_slots: tasks at once on the CPU (default 2). Tasks not pinned to a device use the
            CPU only when there is no GPU.
        per_gpu: most tasks at once on one GPU (default: as many as fit).
    """

    def __init__(self, *, nvml: Nvml | None, cpu_slots: int | None = None,
                 per_gpu: int | None = None) -> None:
        if cpu_slots is not None and cpu_slots < 0:
            raise ValueError(f"cpu_slots = {cpu_slots}: must be >= 0")
        if per_gpu is not None and per_gpu < 1:
            raise ValueError(f"per_gpu = {per_gpu}: must be >= 1 or None")
        self.nvml = nvml
        self.gpus = tuple(f"cuda:{i}" for i in range(nvml.device_count() if nvml else 0))
        self.cpu_slots = DEFAULT_CPU_SLOTS if cpu_slots is None else cpu_slots
        self.per_gpu = per_gpu
        self._placed: dict[str, _Placement] = {}

    @classmethod
    def detect(cls, *, cpu_slots: int | None = None, per_gpu: int | None = None) -> DevicePool:
        """A pool over the GPUs NVML sees (none without ``pynvml`` or a driver)."""
        return cls(nvml=open_nvml(), cpu_slots=cpu_slots, per_gpu=per_gpu)

    @property
    def devices(self) -> tuple[str, ...]:
        return self.gpus + (("cpu",) if self.cpu_slots else ())

    def tasks_on(self, device: str) -> int:
        return sum(p.device == device for p in self._placed.values())

    def available(self, device: str) -> int:
        """Free memory of GPU ``device`` minus what placed tasks have reserved but not taken."""
        assert self.nvml is not None
        index = self.gpus.index(device)
        free, _ = self.nvml.memory(index)
        used = self.nvml.process_memory(index)
        pending = sum(max(0, p.memory - (used.get(p.pid, 0) if p.pid is not None else 0))
                      for p in self._placed.values() if p.device == device)
        return max(0, free - pending)

    def problem(self, *, memory: int | None, pinned: str | None) -> str | None:
        """Why a task could never be placed (unknown device, bigger than every GPU), or None."""
        if pinned == "cpu" or (pinned is None and not self.gpus):
            return None if self.cpu_slots else "there are no CPU slots (cpu_slots = 0)"
        candidates = self._gpus_for(pinned)
        if candidates is None:
            known = ", ".join(self.devices) or "none"
            return f"device {pinned!r} does not exist (devices: {known})"
        if memory is not None and self.nvml is not None:
            largest = max(self.nvml.memory(self.gpus.index(d))[1] for d in candidates)
            if memory > largest:
                return (f"needs {memory / 2**30:.2f} GiB, more than the largest GPU "
                        f"({largest / 2**30:.2f} GiB)")
        return None

    def _gpus_for(self, pinned: str | None) -> tuple[str, ...] | None:
        if pinned in (None, "cuda"):
            return self.gpus or None
        return (pinned,) if pinned in self.gpus else None

    def place(self, task_id: str, *, memory: int | None, pinned: str | None,
              pid: int | None) -> str | None:
        """A device for ``task_id`` (recorded until :meth:`release`), or None: wait.

        ``memory`` None on a GPU: the size is unknown, so the task takes all that is left of
        the GPU with the most room (it is the probe from which the rest learn their size).
        """
        if task_id in self._placed:
            raise ValueError(f"task {task_id!r} is already placed")
        if pinned == "cpu" or (pinned is None and not self.gpus):
            if self.tasks_on("cpu") >= self.cpu_slots:
                return None
            self._placed[task_id] = _Placement(device="cpu", memory=0, pid=pid)
            return "cpu"
        best: tuple[int, str] | None = None
        for device in self._gpus_for(pinned) or ():
            if self.per_gpu is not None and self.tasks_on(device) >= self.per_gpu:
                continue
            room = self.available(device)
            fits = room >= MIN_PROBE_BYTES if memory is None else room >= memory
            if fits and (best is None or room > best[0]):
                best = (room, device)
        if best is None:
            return None
        room, device = best
        self._placed[task_id] = _Placement(device=device, memory=memory or room, pid=pid)
        return device

    def release(self, task_id: str) -> None:
        self._placed.pop(task_id, None)


#: Factor applied to a learned or retried memory estimate (headroom for fragmentation).
MEMORY_MARGIN = 1.2


class MemoryEstimates:
    """How much GPU memory a task will need: its own estimate, else ``default``, else what
    earlier tasks of its group peaked at (x :data:`MEMORY_MARGIN`); None when nothing is known
    yet (the task is then placed as a probe). After an out-of-memory error a task's estimate
    grows by the margin; one with no estimate becomes a probe (a GPU to itself)."""

    def __init__(self, default: int | None = None) -> None:
        self.default = default
        self.learned: dict[str, int] = {}  # group -> estimate
        self._retry: dict[str, int | None] = {}  # task id -> estimate after an OOM

    def of(self, task_id: str, group: str, given: int | None) -> int | None:
        if task_id in self._retry:
            return self._retry[task_id]
        if given is not None:
            return given
        return self.default if self.default is not None else self.learned.get(group)

    def learn(self, group: str, peak: int | None) -> None:
        """A task of ``group`` peaked at ``peak`` bytes (None: it used no GPU memory we saw)."""
        grown = 0 if peak is None else int(peak * MEMORY_MARGIN)
        self.learned[group] = max(self.learned.get(group, 0), grown)

    def out_of_memory(self, task_id: str, group: str, given: int | None) -> None:
        before = self.of(task_id, group, given)
        self._retry[task_id] = int(before * MEMORY_MARGIN) if before else None
