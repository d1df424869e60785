"""The SQLite state: claims, the lease, recovery after a dead scheduler, changed tasks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedloom.core.errors import ConfigError
from fedloom.scheduler import SchedulerError, Stage, StateStore, TaskStatus
from fedloom.scheduler.database import process_alive, process_token


def test_claim_is_atomic_and_counts_starts(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.sqlite")
    store.acquire()
    assert store.register("a", "g", "fp").status is TaskStatus.WAITING
    assert store.claim("a", attempts=1)
    assert not store.claim("a", attempts=1)  # already loading: nobody can start it again
    store.finish("a", {"acc": 0.5}, peak_memory=None)
    assert not store.claim("a", attempts=1)
    row = store.get("a")
    assert (row.status, row.result, row.starts) == (TaskStatus.FINISHED, {"acc": 0.5}, 1)
    assert row.wall_seconds is not None and row.wall_seconds >= 0
    store.close()


def test_failures_keep_stage_message_and_exit_code(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.sqlite")
    store.acquire()
    store.register("a", "g", "fp")
    store.claim("a", attempts=1)
    store.fail("a", stage=Stage.TRAIN, error="ValueError: x", traceback="tb", exit_code=-9)
    row = store.get("a")
    assert (row.status, row.stage, row.error, row.traceback, row.exit_code) == (
        TaskStatus.FAILED, Stage.TRAIN, "ValueError: x", "tb", -9)
    store.retry("a")
    assert store.get("a").status is TaskStatus.WAITING


def test_a_changed_task_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.sqlite")
    store.register("a", "g", "fp-1")
    store.register("a", "g", "fp-1")
    with pytest.raises(ConfigError, match=r"task_id = 'a'.*did different work"):
        store.register("a", "g", "fp-2")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_owner_blocks_a_second_scheduler(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = StateStore(path)
        other._pid = sleeper.pid  # pretend the lease is held by that live process
        other.acquire()
        with pytest.raises(SchedulerError, match=f"in use by another scheduler \\(pid "
                                                 f"{sleeper.pid}\\)"):
            StateStore(path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_dead_owners_tasks_go_back_to_waiting(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    dead = StateStore(path)
    dead._pid = _dead_pid()
    dead.acquire()
    for task_id in ("done", "running", "waiting"):
        dead.register(task_id, "g", "fp")
    dead.claim("done", attempts=1)
    dead.finish("done", {}, None)
    dead.claim("running", attempts=1)
    dead.set_status("running", TaskStatus.TRAINING, device="cpu")
    dead.close()
    store = StateStore(path)
    assert store.acquire() == ["running"]
    statuses = {r.task_id: (r.status, r.starts) for r in store.rows()}
    assert statuses == {"done": (TaskStatus.FINISHED, 1), "running": (TaskStatus.WAITING, 1),
                        "waiting": (TaskStatus.WAITING, 0)}
    store.release()


def test_process_identity() -> None:
    me = os.getpid()
    assert process_alive(me, process_token(me)) and process_alive(me, "")
    assert not process_alive(me, "not-my-start-time")  # same pid, another process
    assert not process_alive(_dead_pid(), "") and not process_alive(None, None)
