"""Task ids, the task lifecycle defaults and TaskGroup bookkeeping (no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedloom.core.errors import ConfigError
from fedloom.scheduler import Scheduler, TaskGroup, TaskStatus
from fedloom.scheduler.devices import DevicePool
from fedloom.scheduler.task import id_problem
from tests.scheduler.tasks import EchoTask


@pytest.mark.parametrize("task_id", ["a", "lr-0.1_seed-2", "Run.3", "x" * 200])
def test_safe_task_ids_are_accepted(task_id: str) -> None:
    assert id_problem(task_id) is None
    assert EchoTask(task_id).task_id == task_id


@pytest.mark.parametrize(("task_id", "reason"), [
    ("", "1 to 200 characters"), ("x" * 201, "1 to 200 characters"),
    ("../up", "not a safe directory name"), ("a/b", "not a safe directory name"),
    (".hidden", "not a safe directory name"), ("-flag", "not a safe directory name"),
    ("with space", "not a safe directory name"), ("..", "not a safe directory name"),
    ("é", "not a safe directory name"), (3, "must be a string"),
])
def test_unsafe_task_ids_are_rejected_with_the_reason(task_id: object, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        EchoTask(task_id)  # type: ignore[arg-type]
    assert "task_id = " in str(info.value)


def test_a_new_task_waits_with_no_outcome() -> None:
    task = EchoTask("t", device="cpu", memory=1 << 30)
    assert task.status is TaskStatus.WAITING and not task.status.active
    assert (task.result, task.stage, task.error, task.workdir, task.attempts) == (
        None, None, None, None, 0)
    assert TaskStatus.TRAINING.active and not TaskStatus.FINISHED.active
    with pytest.raises(ConfigError, match="memory"):
        EchoTask("t", memory=0)


def test_group_add_get_and_counts() -> None:
    group = TaskGroup("g", device="cpu")
    a, b = group.add_task(EchoTask("a")), group.add_task(EchoTask("b", device="cuda:1"))
    assert group.get_task("a") is a and [t.task_id for t in group] == ["a", "b"]
    assert len(group) == 2 and group.device_of(a) == "cpu" and group.device_of(b) == "cuda:1"
    b.status = TaskStatus.FAILED
    assert group.failed == [b] and not group.finished() and not group.done
    a.status = TaskStatus.FINISHED
    assert group.finished() and group.done and group.counts()[TaskStatus.FINISHED] == 1
    assert group.counts()[TaskStatus.WAITING] == 0
    with pytest.raises(ConfigError, match="duplicate task id"):
        group.add_task(EchoTask("a"))
    assert group.get_task("zz") is None
    with pytest.raises(ConfigError, match="name = 'bad name'"):
        TaskGroup("bad name")


def test_groups_are_named_by_their_index() -> None:
    scheduler = Scheduler("unused", devices=DevicePool(nvml=None))
    first, named, third = scheduler.add_group(), scheduler.add_group(TaskGroup("mine")), \
        scheduler.add_group(TaskGroup())
    assert (first.name, named.name, third.name) == ("group-0", "mine", "group-2")
    assert (first.index, named.index, third.index) == (0, 1, 2)
    with pytest.raises(ConfigError, match="no group_name yet"):
        _ = TaskGroup().name


def test_duplicate_ids_across_groups_and_unknown_devices_stop_the_run_before_it_starts(
        tmp_path: Path) -> None:
    root = tmp_path / "sched"
    scheduler = Scheduler(root, devices=DevicePool(nvml=None, cpu_slots=1))
    scheduler.add_group().add_task(EchoTask("same"))
    scheduler.add_group().add_task(EchoTask("same"))
    scheduler.add_group().add_task(EchoTask("gpu-task", device="cuda:0"))
    with pytest.raises(ConfigError) as info:
        scheduler.run()
    text = str(info.value)
    assert "2 problems" in text and "duplicate task id" in text
    assert "device 'cuda:0' does not exist (devices: cpu)" in text
    assert not root.exists()
