"""Sweeps end to end on tiny synthetic runs: failures with their stage, and a sweep of 8 runs
in 2 CPU slots whose scheduler is killed mid-sweep (SIGKILL), then rerun: it finishes the rest
without repeating finished runs."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedloom.cli import main
from fedloom.scheduler import StateStore, TaskStatus
from fedloom.scheduler.database import process_alive
from tests.sweeps.test_sweep_file import DEFAULT, TINY

SWEEP = f"""
name: tiny
base: {DEFAULT}
overrides: [{", ".join(TINY)}]
grid: {{client.lr: [0.01, 0.02]}}
seeds: [0, 1, 2, 3]
target_accuracy: 0.3
slots: {{cpu: 2}}
"""


def metrics(out: Path, task_id: str) -> list[dict[str, object]]:
    path = out / "tasks" / task_id / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_failures_in_load_and_train_are_reported_while_others_finish(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mixed.yaml"
    path.write_text(f"""
base: {DEFAULT}
overrides: [{", ".join(TINY)}, rounds=1]
runs:
  - {{id: good}}
  - {{id: bad-load, overrides: [model.name=cnn]}}
  - {{id: bad-train, overrides: [state_dir=/dev/null/state]}}
""")
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 4
    err = capsys.readouterr().err
    assert "2 task(s) failed: bad-load, bad-train" in err
    rows = {r.task_id: r for r in StateStore(out / "state.sqlite").rows()}
    assert rows["good"].status is TaskStatus.FINISHED
    assert (rows["bad-load"].stage, rows["bad-train"].stage) == ("load", "train")
    assert "model.name = 'cnn': needs image inputs" in str(rows["bad-load"].error)
    assert "state_dir = '/dev/null/state': cannot create it" in str(rows["bad-train"].error)
    report = (out / "report.md").read_text()
    assert "| bad-load | load |  | ConfigError: invalid configuration: model.name" in report
    assert "| bad-train | train |" in report and "| good | 1/1 |" in report


def _state(out: Path) -> list[tuple[str, str, int, int | None]]:
    try:
        with sqlite3.connect(out / "state.sqlite", timeout=5) as db:
            return db.execute("SELECT task_id, status, starts, worker_pid FROM tasks").fetchall()
    except sqlite3.Error:
        return []


def test_a_sweep_of_eight_runs_killed_midway_resumes_without_repeating_finished_runs(
        tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(SWEEP)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "fedloom", "sweep", str(path), "--out", str(out), "--quiet"]
    env = {**os.environ, "FEDLOOM_OFFLINE": "1"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the test watches; the scheduler itself never polls
        state = _state(out)
        if sum(s == "finished" for _, s, _, _ in state) >= 2:
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    state = _state(out)
    done_before = {t for t, s, _, _ in state if s == "finished"}
    orphans = [pid for _, s, _, pid in state if s in ("loading", "loaded", "training") and pid]
    assert 2 <= len(done_before) < 8, state
    before = {t: metrics(out, t) for t in done_before}
    for _ in range(200):  # orphaned task processes notice the closed pipe and exit
        if not any(process_alive(pid, None) for pid in orphans):
            break
        time.sleep(0.05)
    assert not any(process_alive(pid, None) for pid in orphans), orphans

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(done_before)} already done" in rerun.stdout
    rows = StateStore(out / "state.sqlite").rows()
    assert {r.status for r in rows} == {TaskStatus.FINISHED} and len(rows) == 8
    assert {r.device for r in rows} == {"cpu"}
    for row in rows:
        assert [m["round"] for m in metrics(out, row.task_id)] == [1, 2]
        assert row.result is not None
        assert row.result["final_accuracy"] == metrics(out, row.task_id)[-1]["test_accuracy"]
        if row.task_id in done_before:
            assert row.starts == 1 and metrics(out, row.task_id) == before[row.task_id]
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and {r["status"] for r in table} == {"finished"}
    assert all(0 < float(r["final_accuracy"]) <= 1 for r in table)
    report = (out / "report.md").read_text()
    assert "| client.lr-0.01 | 0.01 | 4/4 |" in report and "8 tasks: 8 finished" in report
