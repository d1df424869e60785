"""Device dispatch against a fake NVML: packing by free memory, reservations, limits."""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping

import pytest

from fedloom.scheduler.devices import MIN_PROBE_BYTES, DevicePool, Nvml, open_nvml

GiB = 1 << 30


class FakeNvml:
    """GPUs with given free/total memory (bytes) and per-process use that tests can change."""

    def __init__(self, free: list[float], total: float = 16) -> None:
        self.free = [int(f * GiB) for f in free]
        self.total = int(total * GiB)
        self.used: list[dict[int, int]] = [{} for _ in free]

    def device_count(self) -> int:
        return len(self.free)

    def memory(self, index: int) -> tuple[int, int]:
        return self.free[index], self.total

    def process_memory(self, index: int) -> Mapping[int, int]:
        return dict(self.used[index])

    def allocate(self, index: int, pid: int, gib: float) -> None:
        """Process ``pid`` takes ``gib`` on GPU ``index`` (free memory drops with it)."""
        self.used[index][pid] = self.used[index].get(pid, 0) + int(gib * GiB)
        self.free[index] -= int(gib * GiB)


def test_the_fake_is_an_nvml() -> None:
    nvml: Nvml = FakeNvml([1.0])
    assert nvml.device_count() == 1


def place_all(pool: DevicePool, n: int, gib: float) -> list[str | None]:
    return [pool.place(f"t{i}", memory=int(gib * GiB), pinned=None, pid=1000 + i)
            for i in range(n)]


def test_tasks_are_packed_where_they_fit_most_free_first() -> None:
    pool = DevicePool(nvml=FakeNvml([10, 6, 2]))
    # 10 GiB takes 3 tasks of 3 GiB, 6 GiB takes 2, 2 GiB none: 5 of 7 placed, the rest wait
    placed = place_all(pool, 7, 3)
    assert placed == ["cuda:0", "cuda:0", "cuda:1", "cuda:0", "cuda:1", None, None]
    assert [pool.tasks_on(d) for d in ("cuda:0", "cuda:1", "cuda:2")] == [3, 2, 0]
    assert pool.available("cuda:0") == 1 * GiB and pool.available("cuda:1") == 0


def test_a_reservation_holds_until_the_process_allocates_and_ends_on_release() -> None:
    nvml = FakeNvml([8])
    pool = DevicePool(nvml=nvml)
    assert pool.place("a", memory=5 * GiB, pinned=None, pid=1) == "cuda:0"
    # NVML still shows 8 GiB free, but 5 are promised to "a": a second 5 GiB task must wait
    assert pool.available("cuda:0") == 3 * GiB
    assert pool.place("b", memory=5 * GiB, pinned=None, pid=2) is None
    nvml.allocate(0, pid=1, gib=2)  # "a" took 2 of its 5: 6 free, 3 still promised
    assert pool.available("cuda:0") == 3 * GiB
    nvml.allocate(0, pid=1, gib=3)  # all 5 taken: free memory alone tells the truth now
    assert pool.available("cuda:0") == 3 * GiB
    nvml.allocate(0, pid=99, gib=1)  # another program takes 1 GiB
    assert pool.place("c", memory=3 * GiB, pinned=None, pid=3) is None
    pool.release("a")
    nvml.free[0] += 5 * GiB  # "a" ended and its memory came back
    assert pool.place("b", memory=5 * GiB, pinned=None, pid=2) == "cuda:0"


def test_per_gpu_limit_pinned_devices_and_cpu_slots() -> None:
    pool = DevicePool(nvml=FakeNvml([40, 40]), per_gpu=2, cpu_slots=1)
    assert place_all(pool, 5, 1) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", None]
    assert pool.place("p", memory=GiB, pinned="cuda:1", pid=1) is None  # cuda:1 is full
    pool.release("t1")
    assert pool.place("p", memory=GiB, pinned="cuda:1", pid=1) == "cuda:1"
    # with GPUs, only tasks pinned to the CPU take CPU slots
    assert pool.place("c1", memory=None, pinned="cpu", pid=2) == "cpu"
    assert pool.place("c2", memory=None, pinned="cpu", pid=3) is None
    with pytest.raises(ValueError, match="already placed"):
        pool.place("c1", memory=None, pinned="cpu", pid=2)


def test_a_task_of_unknown_size_takes_what_is_left_of_the_freest_gpu() -> None:
    pool = DevicePool(nvml=FakeNvml([3, 7]))
    assert pool.place("probe", memory=None, pinned=None, pid=1) == "cuda:1"
    assert pool.available("cuda:1") == 0
    assert pool.place("next", memory=2 * GiB, pinned=None, pid=2) == "cuda:0"
    tiny = DevicePool(nvml=FakeNvml([MIN_PROBE_BYTES / GiB / 2]))
    assert tiny.place("probe", memory=None, pinned=None, pid=1) is None


def test_without_gpus_tasks_use_cpu_slots() -> None:
    pool = DevicePool(nvml=None)
    assert pool.devices == ("cpu",) and pool.cpu_slots == 2
    assert place_all(pool, 3, 100) == ["cpu", "cpu", None]
    pool.release("t0")
    assert pool.place("t2", memory=None, pinned=None, pid=3) == "cpu"


def test_problems_that_no_wait_can_fix() -> None:
    pool = DevicePool(nvml=FakeNvml([8, 8], total=16), cpu_slots=0)
    assert pool.problem(memory=8 * GiB, pinned=None) is None
    assert "more than the largest GPU (16.00 GiB)" in str(pool.problem(memory=17 * GiB,
                                                                         pinned=None))
    assert pool.problem(memory=None, pinned="cuda:2") == (
        "device 'cuda:2' does not exist (devices: cuda:0, cuda:1)")
    assert "no CPU slots" in str(pool.problem(memory=None, pinned="cpu"))
    assert DevicePool(nvml=None).problem(memory=None, pinned="cuda") is not None


def test_without_pynvml_there_are_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    assert open_nvml() is None
    assert DevicePool.detect().gpus == ()


class FakePynvml(types.ModuleType):
    """The parts of nvidia-ml-py's ``pynvml`` that :class:`PynvmlNvml` calls."""

    class NVMLError(Exception):
        pass

    def __init__(self, free: list[int], *, uuids: list[str] | None = None,
                 fail_init: bool = False) -> None:
        super().__init__("pynvml")
        self.free, self.uuids, self.fail_init = free, uuids or [], fail_init

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.free)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        return self.uuids.index(uuid)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(free=self.free[handle], total=100, used=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[object]:
        if handle == 1:
            raise self.NVMLError("Not Supported")
        return [types.SimpleNamespace(pid=7, usedGpuMemory=5),
                types.SimpleNamespace(pid=8, usedGpuMemory=None)]


def test_pynvml_binding_follows_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakePynvml([10, 20, 30], uuids=["GPU-a", "GPU-b", "GPU-c"])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = open_nvml()
    assert nvml is not None and nvml.device_count() == 3
    assert nvml.memory(2) == (30, 100) and nvml.process_memory(0) == {7: 5, 8: 0}
    assert nvml.process_memory(1) == {}  # unsupported: no per-process view, not an error
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-b")
    nvml = open_nvml()
    assert nvml is not None and [nvml.memory(i)[0] for i in range(2)] == [30, 20]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert DevicePool(nvml=open_nvml()).gpus == ()
    monkeypatch.setitem(sys.modules, "pynvml", FakePynvml([1], fail_init=True))
    assert open_nvml() is None  # a machine without a driver: CPU slots
