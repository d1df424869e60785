"""Tasks written the way Fedflow's documentation writes them (``Task(task_id, device=...)``,
``load()`` then ``train(device) -> dict``, or the first form ``train()`` that reads
``self.device``). An importable module: a task process imports the class of the task it runs."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fedloom.scheduler import Task


class DeviceTask(Task):
    """Fedflow's documented form: what ``self.device`` held in load() and in train(device)."""

    def __init__(self, task_id: str, *, device: str | None = None) -> None:
        super().__init__(task_id=task_id, device=device)

    def load(self) -> None:
        self.device_in_load = self.device

    def train(self, device: str) -> dict[str, object]:
        return {"device_in_load": self.device_in_load, "self_device": self.device,
                "argument": device, "pid": os.getpid()}


class FirstFormTask(Task):
    """Fedflow 0.2.0's first form: ``train()`` has no argument and reads ``self.device``."""

    def load(self) -> None:
        self.device_in_load = self.device

    def train(self) -> dict[str, object]:  # type: ignore[override]  # Fedflow's first form
        return {"device_in_load": self.device_in_load, "self_device": self.device}


class SlowTrainTask(Task):
    """Loads at once, then trains for ``seconds`` (long enough to be stopped); writes a marker
    file in its work dir when load() ran."""

    def __init__(self, task_id: str, *, seconds: float) -> None:
        super().__init__(task_id)
        self.seconds = seconds

    def load(self) -> None:
        assert self.workdir is not None
        (Path(self.workdir) / "loaded").write_text(str(os.getpid()))

    def train(self, device: str) -> None:  # type: ignore[override]  # a Fedflow task may return nothing
        time.sleep(self.seconds)
