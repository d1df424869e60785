"""Small picklable tasks for the scheduler tests (an importable module, as task classes must be:
a task process imports the class of the task it runs)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from fedloom.scheduler import Task


def record(path: Path | None, **fields: object) -> None:
    """Append one JSON line to ``path`` (O_APPEND writes of one short line do not interleave)."""
    if path is not None:
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(fields) + "\n")


def read_records(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


class EchoTask(Task):
    """Sleeps, then returns where and how it ran; appends start/end records to ``log``."""

    def __init__(self, task_id: str, *, seconds: float = 0.0, log: Path | None = None,
                 device: str | None = None, memory: int | None = None,
                 peak: int | None = None) -> None:
        super().__init__(task_id, device=device, memory=memory)
        self.seconds, self.log, self.peak = seconds, log, peak

    def train(self, device: str) -> dict[str, object]:
        import torch

        record(self.log, task=self.task_id, event="start", device=device, time=time.time(),
               memory=self.memory)
        time.sleep(self.seconds)
        record(self.log, task=self.task_id, event="end", device=device, time=time.time(),
               memory=self.memory)
        return {"device": device, "pid": os.getpid(), "threads": torch.get_num_threads(),
                "workdir": str(self.workdir)}

    def peak_memory(self) -> int | None:
        return self.peak


class FailTask(Task):
    """Raises ``ValueError(message)`` in ``stage`` (load or train)."""

    def __init__(self, task_id: str, *, stage: str, message: str) -> None:
        super().__init__(task_id)
        self.fail_stage, self.message = stage, message

    def load(self) -> None:
        if self.fail_stage == "load":
            raise ValueError(self.message)

    def train(self, device: str) -> dict[str, object]:
        if self.fail_stage == "train":
            raise ValueError(self.message)
        return {}


def _torch_oom() -> BaseException:
    import torch

    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _cuda_oom() -> BaseException:
    import torch

    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")


def _runtime_oom() -> BaseException:
    return RuntimeError("CUDA error: out of memory")


OOM_KINDS: dict[str, Callable[[], BaseException]] = {
    "torch": _torch_oom, "cuda": _cuda_oom, "runtime": _runtime_oom}


class OomTask(Task):
    """Runs out of memory in its first ``times`` trains (counted in the file ``counter``)."""

    def __init__(self, task_id: str, *, counter: Path, times: int, kind: str = "torch",
                 memory: int | None = None) -> None:
        super().__init__(task_id, memory=memory)
        self.counter, self.times, self.kind = counter, times, kind

    def train(self, device: str) -> dict[str, object]:
        record(self.counter, device=device)
        if len(read_records(self.counter)) <= self.times:
            raise OOM_KINDS[self.kind]()
        return {"device": device}


class SuicideTask(Task):
    """Its process is killed (SIGKILL) while training."""

    def train(self, device: str) -> dict[str, object]:
        os.kill(os.getpid(), signal.SIGKILL)
        return {}


class UnpicklableTask(Task):
    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.callback = lambda: None

    def train(self, device: str) -> dict[str, object]:
        return {}
