"""The scheduler with real task processes: lifecycle, failures with their stage, dead
processes, out-of-memory retries, groups in order, and dispatch onto fake GPUs."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from fedloom.scheduler import DevicePool, Scheduler, Stage, StateStore, TaskGroup, TaskStatus
from fedloom.scheduler.task_process import is_out_of_memory
from tests.scheduler.tasks import (
    EchoTask,
    FailTask,
    OomTask,
    SuicideTask,
    UnpicklableTask,
    read_records,
)
from tests.scheduler.test_devices import FakeNvml

GiB = 1 << 30


def intervals(log: Path) -> dict[str, tuple[float, float, str]]:
    """task id -> (train start, train end, device) from an EchoTask log."""
    spans: dict[str, list[object]] = {}
    for r in read_records(log):
        spans.setdefault(str(r["task"]), [0.0, 0.0, r["device"]])[
            0 if r["event"] == "start" else 1] = r["time"]
    return {k: (float(v[0]), float(v[1]), str(v[2])) for k, v in spans.items()}  # type: ignore


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_tasks_finish_in_cpu_slots_and_failures_keep_their_stage(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    scheduler = Scheduler(tmp_path / "s", devices=DevicePool(nvml=None, cpu_slots=2))
    group = scheduler.add_group()
    for i in range(4):
        group.add_task(EchoTask(f"echo-{i}", seconds=0.3, log=log))
    group.add_task(FailTask("bad-load", stage="load", message="no data in /nowhere"))
    group.add_task(FailTask("bad-train", stage="train", message="loss is nan"))
    group.add_task(SuicideTask("killed"))
    group.add_task(UnpicklableTask("unpicklable"))
    summary = scheduler.run()

    assert set(summary.finished) == {f"echo-{i}" for i in range(4)}
    assert set(summary.failed) == {"bad-load", "bad-train", "killed", "unpicklable"}
    echo = group.get_task("echo-0")
    assert echo.status is TaskStatus.FINISHED and echo.result is not None
    assert echo.result["device"] == "cpu" and echo.result["pid"] != os.getpid()
    assert echo.result["threads"] == max(1, (os.cpu_count() or 1) // 2)
    assert echo.result["workdir"] == str(tmp_path / "s" / "echo-0") == str(echo.workdir)
    assert most_at_once([(s, e) for s, e, _ in intervals(log).values()]) <= 2

    load, train = group.get_task("bad-load"), group.get_task("bad-train")
    assert (load.stage, load.error) == (Stage.LOAD, "ValueError: no data in /nowhere")
    assert (train.stage, train.error) == (Stage.TRAIN, "ValueError: loss is nan")
    assert train.traceback is not None and "raise ValueError(self.message)" in train.traceback
    assert load.result is None and train.result is None
    killed = group.get_task("killed")
    assert (killed.stage, killed.exit_code) == (Stage.TRAIN, -9)
    assert "died with exit code -9 (SIGKILL)" in str(killed.error)
    assert group.get_task("unpicklable").stage is Stage.DISPATCH
    assert "picklable" in str(group.get_task("unpicklable").error)

    store = StateStore(tmp_path / "s" / "state.sqlite")
    rows = {r.task_id: r for r in store.rows()}
    assert rows["bad-train"].stage is Stage.TRAIN and rows["killed"].exit_code == -9
    assert rows["echo-1"].result == group.get_task("echo-1").result
    assert (tmp_path / "s" / "bad-train" / "task.log").read_text().count("loss is nan") >= 1


def test_groups_run_in_order_and_a_rerun_skips_finished_tasks(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"

    def build() -> Scheduler:
        scheduler = Scheduler(tmp_path / "s", devices=DevicePool(nvml=None, cpu_slots=2))
        first, second = scheduler.add_group(), scheduler.add_group(TaskGroup("second"))
        for i in range(2):
            first.add_task(EchoTask(f"a{i}", seconds=0.2, log=log))
            second.add_task(EchoTask(f"b{i}", seconds=0.1, log=log))
        second.add_task(FailTask("flaky", stage="train", message="first time"))
        return scheduler

    build().run()
    spans = intervals(log)
    assert max(spans[t][1] for t in ("a0", "a1")) < min(spans[t][0] for t in ("b0", "b1"))
    summary = build().run()  # finished tasks are adopted, the failed one is tried again
    assert set(summary.skipped) == {"a0", "a1", "b0", "b1"} and summary.failed == ("flaky",)
    assert len(read_records(log)) == 8  # no echo task ran twice
    assert StateStore(tmp_path / "s" / "state.sqlite").get("flaky").starts == 2


def test_out_of_memory_is_recognised_in_every_torch_form() -> None:
    import torch

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_NOT_ENOUGH_MEMORY"))
    assert is_out_of_memory(MemoryError())
    try:
        try:
            raise torch.OutOfMemoryError("inner")
        except torch.OutOfMemoryError as inner:
            raise ValueError("wrapped") from inner
    except ValueError as outer:
        assert is_out_of_memory(outer)
    assert not is_out_of_memory(ValueError("shape mismatch"))


@pytest.mark.parametrize("kind", ["torch", "cuda", "runtime"])
def test_out_of_memory_puts_the_task_back_until_it_fits(tmp_path: Path, kind: str) -> None:
    nvml = FakeNvml([8])
    scheduler = Scheduler(tmp_path / "s", devices=DevicePool(nvml=nvml), oom_retries=2)
    group = scheduler.add_group()
    task = group.add_task(OomTask("oom", counter=tmp_path / "n", times=1, kind=kind,
                                  memory=GiB))
    scheduler.run()
    assert task.status is TaskStatus.FINISHED and task.attempts == 2
    assert [r["device"] for r in read_records(tmp_path / "n")] == ["cuda:0", "cuda:0"]


def test_out_of_memory_retries_are_bounded(tmp_path: Path) -> None:
    scheduler = Scheduler(tmp_path / "s", devices=DevicePool(nvml=FakeNvml([8, 8])),
                          oom_retries=2)
    task = scheduler.add_group().add_task(OomTask("oom", counter=tmp_path / "n", times=99,
                                                  memory=GiB))
    scheduler.run()
    assert task.status is TaskStatus.FAILED and task.stage is Stage.TRAIN
    assert task.attempts == 3 and len(read_records(tmp_path / "n")) == 3
    assert "out of memory in all 3 attempts" in str(task.error)
    assert "OutOfMemoryError: CUDA out of memory" in str(task.error)
    assert StateStore(tmp_path / "s" / "state.sqlite").get("oom").starts == 3


def test_tasks_are_packed_onto_fake_gpus_within_their_memory(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    free = {"cuda:0": 10, "cuda:1": 4}  # GiB: room for 3 and 1 tasks of 3 GiB
    scheduler = Scheduler(tmp_path / "s", devices=DevicePool(nvml=FakeNvml(list(free.values()))),
                          max_processes=6, max_loading=6)
    group = scheduler.add_group()
    for i in range(8):
        group.add_task(EchoTask(f"t{i}", seconds=0.4, log=log, memory=3 * GiB))
    group.add_task(EchoTask("pinned", seconds=0.1, log=log, memory=3 * GiB, device="cuda:1"))
    summary = scheduler.run()
    assert len(summary.finished) == 9
    spans = intervals(log)
    assert spans["pinned"][2] == "cuda:1"
    for device, gib in free.items():
        on_device = [(s, e) for s, e, d in spans.values() if d == device]
        assert on_device and most_at_once(on_device) * 3 <= gib, device


def test_a_task_of_unknown_size_runs_alone_first_and_its_peak_sizes_the_rest(
        tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    scheduler = Scheduler(tmp_path / "s", devices=DevicePool(nvml=FakeNvml([10])),
                          max_processes=4, max_loading=4)
    group = scheduler.add_group()
    for i in range(4):
        group.add_task(EchoTask(f"t{i}", seconds=0.2, log=log, peak=2 * GiB))
    scheduler.run()
    spans = sorted(intervals(log).values())
    assert all(t.status is TaskStatus.FINISHED for t in group)
    assert spans[0][1] <= spans[1][0]  # the probe trained alone
    assert scheduler.estimates.learned[group.name] == int(2 * GiB * 1.2)
    assert StateStore(tmp_path / "s" / "state.sqlite").rows()[0].peak_memory == 2 * GiB


def test_the_next_task_starts_as_soon_as_a_slot_frees_not_on_a_poll(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    scheduler = Scheduler(tmp_path / "s", devices=DevicePool(nvml=None, cpu_slots=1),
                          max_processes=1, recheck_seconds=30)
    group = scheduler.add_group()
    for i in range(3):
        group.add_task(EchoTask(f"t{i}", seconds=0.1, log=log))
    scheduler.run()
    spans = sorted((s, e) for s, e, _ in intervals(log).values())
    gaps = [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(spans)]
    assert len(gaps) == 2 and max(gaps) < 1.5, gaps  # a new process, woken by the last's exit
