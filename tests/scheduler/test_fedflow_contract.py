"""Fedflow's Task and TaskGroup contract, in Fedflow's names and arguments: ``self.device`` in
load() and train(), the process control of a task (start, start_load, start_train, is_alive,
exit), a group's group_name, index, workdir, result, report_finish, report_exception,
finished(), retrieve_task and get_task, and the plain message for a script without a main
guard."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedloom.core.errors import ConfigError
from fedloom.scheduler import (
    DevicePool,
    Scheduler,
    SchedulerError,
    Stage,
    TaskGroup,
    TaskStatus,
    task_process,
)
from fedloom.scheduler.task_process import NO_MAIN_GUARD, death_message
from tests.scheduler.fedflow_tasks import DeviceTask, FirstFormTask, SlowTrainTask
from tests.scheduler.test_devices import FakeNvml

GiB = 1 << 30
ROOT = Path(__file__).resolve().parents[2]
GUARD = 'if __name__ == "__main__":'


# --- TaskGroup, without processes --------------------------------------------------------------

def test_group_name_defaults_to_the_index_the_scheduler_gives(tmp_path: Path) -> None:
    group = TaskGroup()
    assert (group.index, group.workdir) == (-1, None)
    scheduler = Scheduler(tmp_path, devices=DevicePool(nvml=None))
    scheduler.add_group(TaskGroup("first"))
    assert scheduler.add_group(group) is group
    assert (group.index, group.group_name, group.name) == (1, "group-1", "group-1")
    assert TaskGroup(group_name="g").group_name == TaskGroup(name="g").name == "g"
    with pytest.raises(ConfigError, match="give one"):
        TaskGroup("a", name="b")
    with pytest.raises(ConfigError, match="group_name = 'bad name'"):
        TaskGroup(group_name="bad name")
    with pytest.raises(ConfigError, match="added already"):
        scheduler.add_group(group)


def test_reports_fill_result_and_finished_is_a_method() -> None:
    group = TaskGroup("g")
    for i in range(3):
        group.add_task(DeviceTask(f"t{i}"))
    group.report_finish("t0", {"acc": 0.5})
    group.report_exception("t1", "TRAIN", "loss is nan")  # Fedflow's tasks say LOAD / TRAIN
    assert group.finished() is False and list(group.result) == ["t0", "t1"]
    group.report_finish("t2")
    assert group.finished() is True
    assert group.result == {
        "t0": {"type": "success", "data": {"acc": 0.5}},
        "t1": {"type": "fail", "data": {"stage": "train", "message": "loss is nan"}},
        "t2": {"type": "success", "data": {}},
    }
    failed = group.get_task("t1")
    assert failed is not None and (failed.status, failed.stage) == (TaskStatus.FAILED, Stage.TRAIN)
    assert group.get_task("nope") is None
    with pytest.raises(ConfigError, match="task_id = 'nope': no such task in group g"):
        group.report_finish("nope")
    with pytest.raises(ConfigError, match="stage = 'fit': must be one of dispatch, load, train"):
        group.report_exception("t0", "fit", "x")


def test_retrieve_task_picks_at_random_among_the_tasks_in_that_status() -> None:
    group = TaskGroup("g")
    tasks = [group.add_task(DeviceTask(f"t{i}")) for i in range(6)]
    for task in tasks[:3]:
        task.status = TaskStatus.LOADED
    assert group.retrieve_task(TaskStatus.TRAINING) is None
    picked = {group.retrieve_task(TaskStatus.LOADED) for _ in range(200)}
    assert picked == set(tasks[:3])  # each one: missing one has probability 3 * (2/3) ** 200
    assert group.retrieve_task("waiting") in tasks[3:]
    with pytest.raises(ConfigError, match="status = 'init': must be one of waiting"):
        group.retrieve_task("init")


# --- a script without a main guard ----------------------------------------------------------

def test_death_messages_say_what_happened(tmp_path: Path) -> None:
    unguarded = death_message(NO_MAIN_GUARD, started=False, workdir=tmp_path)
    assert f"has no `{GUARD}` guard" in unguarded and "task.log" not in unguarded
    starting = death_message(1, started=False, workdir=tmp_path)
    assert "died with exit code 1 while starting" in starting and GUARD in starting
    assert "scheduler's stderr" in starting
    assert death_message(-9, started=True, workdir=tmp_path) == (
        f"the task's process died with exit code -9 (SIGKILL); its output is in "
        f"{tmp_path}/task.log")
    assert "died with exit code 76;" in death_message(NO_MAIN_GUARD, started=True, workdir=None)


def test_a_process_importing_the_script_stops_before_it_starts_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a task process that runs an unguarded script again does when the script reaches
    ``Scheduler.run()`` or ``Task.start()``: exit with NO_MAIN_GUARD, touching nothing."""
    def fake_exit(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(task_process.os, "_exit", fake_exit)
    monkeypatch.setattr(mp.current_process(), "_inheriting", True, raising=False)
    scheduler = Scheduler(tmp_path / "s", devices=DevicePool(nvml=None))
    scheduler.add_group().add_task(DeviceTask("a"))
    with pytest.raises(SystemExit) as run:
        scheduler.run()
    with pytest.raises(SystemExit) as start:
        DeviceTask("b").start(tmp_path / "b")
    assert run.value.code == start.value.code == NO_MAIN_GUARD
    assert not (tmp_path / "s").exists() and not (tmp_path / "b").exists()


SCRIPT = """\
import json, sys
from fedloom.scheduler import DevicePool, Scheduler, TaskGroup
from tests.scheduler.fedflow_tasks import DeviceTask

{guard}
    scheduler = Scheduler(sys.argv[1], devices=DevicePool(nvml=None, cpu_slots=1),
                          max_processes=1, preload=("fedloom",))
    group = scheduler.add_group(TaskGroup("main"))
    for i in range(3):
        group.add_task(DeviceTask(f"t{{i}}"))
    scheduler.run()
    print(json.dumps({{t.task_id: [t.status.value, t.stage, t.error] for t in group}}))
"""


@pytest.mark.integration
@pytest.mark.parametrize("guarded", [False, True])
def test_a_script_without_a_main_guard_is_told_so_plainly(tmp_path: Path, guarded: bool) -> None:
    script = tmp_path / "sweep.py"
    body = SCRIPT.format(guard=GUARD if guarded else "if True:  # no guard")
    script.write_text(textwrap.dedent(body))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout.splitlines()[-1])
    if guarded:
        assert {k: v[0] for k, v in outcome.items()} == dict.fromkeys(("t0", "t1", "t2"),
                                                                       "finished")
        return
    plain = f"the script {script} has no `{GUARD}` guard"
    assert outcome["t0"][2].startswith(plain) and "task.log" not in outcome["t0"][2]
    assert all(outcome[t][:2] == ["failed", "dispatch"] for t in outcome)  # no task ran
    assert len({error for _, _, error in outcome.values()}) == 1
    assert proc.stderr.count(f"fedloom: {plain}") == 1  # the one process that ran it again
    assert not (tmp_path / "run" / "t1").exists()


# --- a task's process control, without a scheduler ---------------------------------------------

def test_start_load_and_train_by_hand(tmp_path: Path) -> None:
    task = DeviceTask("by-hand")
    assert not task.is_alive()
    with pytest.raises(SchedulerError, match=r"start_load\(\) needs its process"):
        task.start_load()
    task.start(tmp_path / "by-hand", preload=("fedloom",))
    assert task.is_alive() and task.status is TaskStatus.WAITING
    with pytest.raises(SchedulerError, match=r"is waiting: start_train\(\) needs a task"):
        task.start_train("cpu")
    task.start_load()
    assert task.wait(timeout=60) is TaskStatus.LOADED
    task.start_train("cpu")
    assert task.wait(timeout=60) is TaskStatus.FINISHED
    assert task.process is not None and task.result == {
        "device_in_load": None, "self_device": "cpu", "argument": "cpu",
        "pid": task.process.pid}
    assert task.used_device == "cpu" and task.device is None  # the pin, here, is unchanged
    task.exit()  # it had ended: nothing to stop
    assert not task.is_alive() and task.status is TaskStatus.FINISHED
    assert (tmp_path / "by-hand" / "task.log").exists()


def test_exit_stops_a_training_task_which_can_start_again(tmp_path: Path) -> None:
    task = SlowTrainTask("slow", seconds=60)
    task.start(tmp_path / "slow", preload=("fedloom",))
    task.start_load()
    task.start_train("cpu")  # queued behind the load, as Fedflow's scheduler may send it
    marker = tmp_path / "slow" / "loaded"
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert task.is_alive() and task.status is TaskStatus.TRAINING
    began = time.monotonic()
    task.exit(timeout=10)
    assert not task.is_alive() and task.status is TaskStatus.WAITING
    assert time.monotonic() - began < 5  # it obeyed; it was not killed after the timeout
    task.seconds = 0.0
    task.start()
    task.start_load()
    task.start_train("cpu")
    assert task.wait(timeout=60) is TaskStatus.FINISHED and task.result == {}
    with pytest.raises(ConfigError, match="device = ''"):
        DeviceTask("x").start_train("")
    with pytest.raises(ConfigError, match="start_method = 'fork': must be forkserver or spawn"):
        DeviceTask("x").start(tmp_path / "x", start_method="fork")


def test_a_process_that_dies_fails_its_task_with_the_exit_code(tmp_path: Path) -> None:
    task = SlowTrainTask("killed", seconds=60)
    task.start(tmp_path / "killed", preload=("fedloom",))
    task.start_load()
    assert task.wait(timeout=60) is TaskStatus.LOADED
    task.start_train("cpu")
    assert task.process is not None
    task.process.kill()
    assert task.wait(timeout=60) is TaskStatus.FAILED
    assert (task.stage, task.exit_code) == (Stage.TRAIN, -9)
    assert task.error == (f"the task's process died with exit code -9 (SIGKILL); its output "
                          f"is in {tmp_path / 'killed'}/task.log")


# --- under the scheduler -----------------------------------------------------------------------

def test_fedflow_tasks_find_their_device_in_self_device(tmp_path: Path) -> None:
    scheduler = Scheduler(tmp_path / "s", devices=DevicePool(nvml=FakeNvml([8, 8])),
                          memory=GiB, max_processes=4, max_loading=4)
    group = scheduler.add_group(TaskGroup("fedflow"))
    group.add_task(DeviceTask("unpinned"))
    group.add_task(DeviceTask("pinned", device="cuda:1"))
    group.add_task(FirstFormTask("first-form"))
    on_cpu = scheduler.add_group(TaskGroup(device="cpu"))
    on_cpu.add_task(DeviceTask("on-cpu"))
    summary = scheduler.run()

    assert summary.failed == () and group.finished() and on_cpu.finished()
    got = {t.task_id: (t.result, t.used_device) for g in (group, on_cpu) for t in g}
    for task_id, load_device in (("unpinned", None), ("pinned", "cuda:1"),
                                 ("first-form", None), ("on-cpu", None)):
        result, used = got[task_id]
        assert result is not None and used is not None
        assert result["device_in_load"] == load_device, task_id  # only the task's own pin
        assert result["self_device"] == used != "cuda", task_id  # a device, not a kind
    assert got["pinned"][1] == "cuda:1" and got["on-cpu"][1] == "cpu"
    assert got["unpinned"][1] in ("cuda:0", "cuda:1") and got["unpinned"][0]["argument"] == (
        got["unpinned"][1])
    unpinned = group.get_task("unpinned")
    assert unpinned is not None and unpinned.device is None  # a retry is placed afresh
    assert group.result["pinned"] == {"type": "success", "data": got["pinned"][0]}
    assert (group.index, on_cpu.index, on_cpu.group_name) == (0, 1, "group-1")
    assert group.workdir == tmp_path / "s" / "_groups" / "fedflow" and group.workdir.is_dir()
    assert on_cpu.workdir == tmp_path / "s" / "_groups" / "group-1"
