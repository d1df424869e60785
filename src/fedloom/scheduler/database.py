"""The scheduler's state in SQLite (WAL), so an interrupted run resumes where it stopped.

One row per task holds its status, failure (stage, message, traceback, exit code), result, how
often it was started and which scheduler process owns it. A lease row names the scheduler that
runs the state now (pid plus the process's start time, so a reused pid is not mistaken for it).
A scheduler that finds the lease held by a dead process takes it over and puts that process's
unfinished tasks back to ``waiting``; a live owner makes it refuse to start. Only the scheduler
process writes; tasks report to it through pipes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fedloom.core.errors import ConfigError
from fedloom.scheduler.task import Result, SchedulerError, Stage, TaskStatus

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY, group_name TEXT NOT NULL, fingerprint TEXT NOT NULL,
    status TEXT NOT NULL, stage TEXT, error TEXT, traceback TEXT, exit_code INTEGER,
    result TEXT, device TEXT, starts INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, peak_memory INTEGER,
    owner_pid INTEGER, worker_pid INTEGER, worker_token TEXT,
    started_at REAL, ended_at REAL);
CREATE TABLE IF NOT EXISTS lease (
    id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER NOT NULL, token TEXT NOT NULL,
    since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL, time REAL NOT NULL,
    event TEXT NOT NULL, detail TEXT);
"""


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (Linux), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_token(pid: int) -> str:
    """Identifies a process beyond its pid: its start time (Linux), or "" where unknown."""
    fields = _proc_stat(pid)
    return fields[19] if fields else ""  # field 22 of stat: starttime


def process_alive(pid: int | None, token: str | None) -> bool:
    """Whether ``pid`` runs (not a zombie) and is the process ``token`` was taken from."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_stat(pid)
    if fields is None:
        return True
    return fields[0] != "Z" and (not token or fields[19] == token)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRow:
    task_id: str
    group_name: str
    status: TaskStatus
    stage: Stage | None
    error: str | None
    traceback: str | None
    exit_code: int | None
    result: Result | None
    device: str | None
    starts: int
    attempts: int
    peak_memory: int | None
    started_at: float | None
    ended_at: float | None

    @property
    def wall_seconds(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at


class StateStore:
    """The SQLite file at ``path`` (created on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._pid = os.getpid()

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, args: tuple[object, ...]) -> int:
        return self._db.execute(sql, args).rowcount

    def _event(self, task_id: str, event: str, detail: str | None = None) -> None:
        self._write("INSERT INTO events (task_id, time, event, detail) VALUES (?, ?, ?, ?)",
                    (task_id, time.time(), event, detail))

    # --- ownership ---------------------------------------------------------------------------

    def acquire(self) -> list[str]:
        """Take the lease; put the unfinished tasks of a dead previous owner back to waiting
        (killing workers of its that still run). Returns the ids of the tasks put back."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute("SELECT pid, token FROM lease WHERE id = 1").fetchone()
            if row is not None and row[0] != self._pid and process_alive(row[0], row[1]):
                raise SchedulerError(f"{self.path} is in use by another scheduler (pid {row[0]});"
                                     " wait for it to end or stop it")
            self._write("INSERT OR REPLACE INTO lease (id, pid, token, since) VALUES (1, ?, ?, ?)",
                        (self._pid, process_token(self._pid), time.time()))
            stale = self._db.execute(
                "SELECT task_id, worker_pid, worker_token FROM tasks WHERE status IN (?, ?, ?)",
                (TaskStatus.LOADING, TaskStatus.LOADED, TaskStatus.TRAINING)).fetchall()
            for task_id, worker_pid, worker_token in stale:
                _kill(worker_pid, worker_token)
                self._write("UPDATE tasks SET status = ?, owner_pid = NULL, worker_pid = NULL "
                            "WHERE task_id = ?", (TaskStatus.WAITING, task_id))
                self._event(task_id, "reset", "its scheduler had stopped")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return [s[0] for s in stale]

    def release(self) -> None:
        """Put this scheduler's active tasks back to waiting and give up the lease."""
        self._write("UPDATE tasks SET status = ?, owner_pid = NULL, worker_pid = NULL "
                    "WHERE owner_pid = ? AND status IN (?, ?, ?)",
                    (TaskStatus.WAITING, self._pid, TaskStatus.LOADING, TaskStatus.LOADED,
                     TaskStatus.TRAINING))
        self._write("DELETE FROM lease WHERE id = 1 AND pid = ?", (self._pid,))

    # --- tasks -------------------------------------------------------------------------------

    def register(self, task_id: str, group_name: str, fingerprint: str) -> TaskRow:
        """The task's row, created as waiting when new. A known task whose fingerprint changed
        is refused: the same id would name different work."""
        self._write("INSERT OR IGNORE INTO tasks (task_id, group_name, fingerprint, status) "
                    "VALUES (?, ?, ?, ?)", (task_id, group_name, fingerprint, TaskStatus.WAITING))
        (stored,) = self._db.execute("SELECT fingerprint FROM tasks WHERE task_id = ?",
                                     (task_id,)).fetchone()
        if stored != fingerprint:
            raise ConfigError(f"task_id = {task_id!r}: {self.path} holds a task with this id "
                              "that did different work (its config changed); use a new state "
                              "directory or new task ids")
        return self.get(task_id)

    def retry(self, task_id: str) -> None:
        """A failed task back to waiting (a resumed run tries it again)."""
        self._write("UPDATE tasks SET status = ? WHERE task_id = ? AND status = ?",
                    (TaskStatus.WAITING, task_id, TaskStatus.FAILED))

    def claim(self, task_id: str, *, attempts: int) -> bool:
        """Mark a waiting task as loading by this scheduler; False when it was not waiting."""
        claimed = self._write(
            "UPDATE tasks SET status = ?, starts = starts + 1, attempts = ?, owner_pid = ?, "
            "stage = NULL, error = NULL, traceback = NULL, exit_code = NULL, result = NULL, "
            "device = NULL, started_at = ?, ended_at = NULL WHERE task_id = ? AND status = ?",
            (TaskStatus.LOADING, attempts, self._pid, time.time(), task_id,
             TaskStatus.WAITING)) == 1
        if claimed:
            self._event(task_id, "start", f"attempt {attempts}")
        return claimed

    def started(self, task_id: str, worker_pid: int) -> None:
        self._write("UPDATE tasks SET worker_pid = ?, worker_token = ? WHERE task_id = ?",
                    (worker_pid, process_token(worker_pid), task_id))

    def set_status(self, task_id: str, status: TaskStatus, *, device: str | None = None) -> None:
        self._write("UPDATE tasks SET status = ?, device = COALESCE(?, device) WHERE task_id = ?",
                    (status, device, task_id))

    def finish(self, task_id: str, result: Result, peak_memory: int | None) -> None:
        self._write("UPDATE tasks SET status = ?, result = ?, peak_memory = ?, ended_at = ?, "
                    "owner_pid = NULL WHERE task_id = ?",
                    (TaskStatus.FINISHED, json.dumps(result), peak_memory, time.time(), task_id))
        self._event(task_id, "finish")

    def fail(self, task_id: str, *, stage: Stage, error: str, traceback: str | None = None,
             exit_code: int | None = None) -> None:
        self._write("UPDATE tasks SET status = ?, stage = ?, error = ?, traceback = ?, "
                    "exit_code = ?, ended_at = ?, owner_pid = NULL WHERE task_id = ?",
                    (TaskStatus.FAILED, stage, error, traceback, exit_code, time.time(),
                     task_id))
        self._event(task_id, "fail", f"{stage}: {error}")

    def requeue(self, task_id: str, reason: str) -> None:
        self._write("UPDATE tasks SET status = ?, owner_pid = NULL, worker_pid = NULL "
                    "WHERE task_id = ?", (TaskStatus.WAITING, task_id))
        self._event(task_id, "requeue", reason)

    def get(self, task_id: str) -> TaskRow:
        rows = list(self._rows("WHERE task_id = ?", (task_id,)))
        if not rows:
            raise KeyError(f"no task {task_id!r} in {self.path}")
        return rows[0]

    def rows(self) -> list[TaskRow]:
        return list(self._rows("ORDER BY rowid", ()))

    def starts(self, task_id: str) -> int:
        """How many times the task was started (every attempt, over every run)."""
        return self.get(task_id).starts

    def _rows(self, where: str, args: tuple[object, ...]) -> Iterator[TaskRow]:
        cols = ("task_id, group_name, status, stage, error, traceback, exit_code, result, "
                "device, starts, attempts, peak_memory, started_at, ended_at")
        for r in self._db.execute(f"SELECT {cols} FROM tasks {where}", args):
            yield TaskRow(task_id=r[0], group_name=r[1], status=TaskStatus(r[2]),
                          stage=None if r[3] is None else Stage(r[3]), error=r[4],
                          traceback=r[5], exit_code=r[6],
                          result=None if r[7] is None else json.loads(r[7]), device=r[8],
                          starts=r[9], attempts=r[10], peak_memory=r[11], started_at=r[12],
                          ended_at=r[13])


def _kill(pid: int | None, token: str | None) -> None:
    """Stop a worker left by a dead scheduler (workers also stop themselves when the
    scheduler's pipe closes; this covers one that is slow to notice)."""
    if pid and process_alive(pid, token):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        for _ in range(100):
            if not process_alive(pid, token):
                return
            time.sleep(0.01)
