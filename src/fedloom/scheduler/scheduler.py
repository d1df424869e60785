"""The scheduler: runs task groups in order, each task in its own process and work dir.

Inside a group, tasks run in parallel up to the limits: processes at once, loads at once, and
what the devices take (:mod:`fedloom.scheduler.devices`). A task process loads first with no
device; once loaded it waits for one, and gets it as soon as a GPU has room for its memory
estimate (given, or learned from the first task of its group) or a CPU slot is free. An
out-of-memory error in ``train`` puts the task back with a larger estimate, a bounded number of
times; a process that dies marks its task failed with the exit code.

Tasks run through their own process control (``Task.start``, ``start_load``, ``start_train``). A
script without an ``if __name__ == "__main__":`` guard fails its tasks saying so, plainly.

Waiting is event-driven: the loop blocks on the task pipes and process sentinels
(``multiprocessing.connection.wait``) and wakes when a task says something or exits. Only while
a loaded task waits for GPU memory held by *other* programs does it also wake every
``recheck_seconds`` to measure again, since their memory coming free sends no event.

Example:
    >>> from fedloom.scheduler import Scheduler, TaskGroup
    >>> from my_tasks import TrainTask  # a Task subclass in an importable module
    >>> scheduler = Scheduler("runs/sched")                                     # doctest: +SKIP
    >>> group = scheduler.add_group(TaskGroup("lr"))                            # doctest: +SKIP
    >>> for lr in (0.01, 0.1):                                                  # doctest: +SKIP
    ...     group.add_task(TrainTask(f"lr-{lr}", lr=lr))
    >>> summary = scheduler.run()                                               # doctest: +SKIP
    >>> group.get_task("lr-0.1").result                                         # doctest: +SKIP
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from fedloom.core.errors import ConfigError
from fedloom.scheduler.database import StateStore
from fedloom.scheduler.devices import DevicePool, MemoryEstimates
from fedloom.scheduler.group import TaskGroup
from fedloom.scheduler.progress import shown
from fedloom.scheduler.task import Result, SchedulerError, Stage, Task, TaskStatus
from fedloom.scheduler.task_process import (
    NO_MAIN_GUARD,
    Event,
    Failed,
    Finished,
    Loaded,
    TaskProcess,
    death_message,
    death_stage,
    default_start_method,
    exit_if_importing_main,
    sigterm_as_interrupt,
)

log = logging.getLogger(__name__)

#: Where the groups' work dirs go in ``root``: no task id starts with "_", so none is this one.
GROUPS_DIR = "_groups"

@dataclass(frozen=True, slots=True, kw_only=True)
class RunSummary:
    """Task ids by outcome; ``skipped`` had finished in an earlier run and did not run again."""

    finished: tuple[str, ...]
    failed: tuple[str, ...]
    skipped: tuple[str, ...]
    seconds: float


@dataclass(slots=True, kw_only=True)
class _Running:
    task: Task
    group: TaskGroup
    process: TaskProcess
    status: TaskStatus
    gpu: bool  # bound for a GPU (else a CPU slot)
    probe: bool = False  # placed with an unknown size: its peak sizes the rest of its group
    ended: bool = False  # its outcome arrived (finished, failed or put back)
    requeue: bool = False


class Scheduler:
    """Runs :class:`TaskGroup` s; see the module docstring.

    Args:
        root: work dirs go to ``root/<task_id>`` (a group's to ``root/_groups/<group_name>``);
            the state to ``root/state.sqlite``.
        state: the SQLite state file instead.
        devices: the device pool (default: GPUs seen by NVML, else 2 CPU slots).
        max_processes: task processes at once (default: CPU slots + 1 without GPUs, so one
            task loads while the others train; else one per core).
        max_loading: tasks in ``load()`` at once.
        memory: GPU memory estimate (bytes) of tasks that give none; None: learned.
        oom_retries: times a task that ran out of memory is put back before it fails.
        retry_failed: a resumed run starts failed tasks again (finished ones never).
        recheck_seconds: how often to measure again while waiting on memory of other programs.
        start_method: ``forkserver`` (default where available: tasks start in milliseconds
            from a server that imported ``preload`` once, and CUDA is never initialised in it)
            or ``spawn``.
        preload: modules the forkserver imports once for every task (the first scheduler of a
            process starts the server). ``torch._dynamo`` is what torch imports the first time
            an optimizer is built: seconds that every task would otherwise pay.
        progress: show a live table of the tasks (rich) while running.
    """

    def __init__(self, root: str | Path, *, state: str | Path | None = None,
                 devices: DevicePool | None = None, max_processes: int | None = None,
                 max_loading: int = 2, memory: int | None = None, oom_retries: int = 2,
                 retry_failed: bool = True, recheck_seconds: float = 2.0,
                 start_method: str | None = None,
                 preload: Sequence[str] = ("fedloom", "torch._dynamo"),
                 progress: bool = False) -> None:
        if max_processes is not None and max_processes < 1:
            raise ConfigError(f"max_processes = {max_processes}: must be >= 1")
        if max_loading < 1 or oom_retries < 0:
            raise ConfigError(f"max_loading = {max_loading}, oom_retries = {oom_retries}: "
                              "need max_loading >= 1 and oom_retries >= 0")
        self.root = Path(root)
        self.state_path = Path(state) if state is not None else self.root / "state.sqlite"
        self.devices = devices if devices is not None else DevicePool.detect()
        cores = os.cpu_count() or 1
        self.max_processes = max_processes or (
            self.devices.cpu_slots + 1 if not self.devices.gpus else max(2, cores))
        self.max_loading = max_loading
        self.estimates = MemoryEstimates(memory)
        self.oom_retries = oom_retries
        self.retry_failed = retry_failed
        self.recheck_seconds = recheck_seconds
        methods = mp.get_all_start_methods()
        self.start_method = start_method or default_start_method()
        if self.start_method not in ("forkserver", "spawn") or self.start_method not in methods:
            raise ConfigError(f"start_method = {self.start_method!r}: must be forkserver or spawn "
                              f"(available here: {', '.join(methods)})")
        self.preload = tuple(preload)
        self.progress = progress
        self.groups: list[TaskGroup] = []
        self.started_at: dict[str, float] = {}  # task id -> when its current attempt started
        self._running: dict[str, _Running] = {}
        self._queue: deque[Task] = deque()
        self._store: StateStore | None = None
        self._no_main_guard: str | None = None  # the message, once a task process ran the script

    def add_group(self, group: TaskGroup | None = None) -> TaskGroup:
        """Append ``group`` (a new empty one when None); sets its ``index``, which names it
        ``group-{index}`` if unnamed."""
        group = group if group is not None else TaskGroup()
        if any(g is group for g in self.groups):
            raise ConfigError(f"group_name = {group.group_name!r}: this group was added already")
        group.index = len(self.groups)
        self.groups.append(group)
        return group

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> RunSummary:
        """Run every group in order; returns when every task has finished or failed.

        Ctrl-C (or SIGTERM) stops the task processes and puts their tasks back to waiting, so
        running again with the same state resumes; finished tasks are never run again.
        """
        exit_if_importing_main()  # a task process running an unguarded script: stop here
        begin = time.monotonic()
        self._check()
        self.root.mkdir(parents=True, exist_ok=True)
        store = self._store = StateStore(self.state_path)
        try:
            store.acquire()
            skipped = self._register(store)
            with shown(self, self.progress), sigterm_as_interrupt():
                for group in self.groups:
                    self._run_group(group)
        except BaseException:
            self._stop_all()
            raise
        finally:
            store.release()
            store.close()
            self._store = None
        tasks = [t for g in self.groups for t in g]
        return RunSummary(
            finished=tuple(t.task_id for t in tasks
                           if t.status is TaskStatus.FINISHED and t.task_id not in skipped),
            failed=tuple(t.task_id for t in tasks if t.status is TaskStatus.FAILED),
            skipped=tuple(skipped), seconds=time.monotonic() - begin)

    def _check(self) -> None:
        """Every problem that would stop a task from ever running, before anything runs."""
        problems: list[str] = []
        seen: dict[str, str] = {}
        for group in self.groups:
            for task in group:
                if task.task_id in seen:
                    problems.append(f"task_id = {task.task_id!r}: duplicate task id (groups "
                                    f"{seen[task.task_id]} and {group.name})")
                seen[task.task_id] = group.name
                memory = self.estimates.of(task.task_id, group.name, task.memory)
                problem = self.devices.problem(memory=memory, pinned=group.device_of(task))
                if problem:
                    problems.append(f"task {task.task_id!r}: {problem}")
        if problems:
            raise ConfigError(problems)

    def _register(self, store: StateStore) -> list[str]:
        """Record every task in the state; adopt the outcome of tasks that already ran."""
        skipped = []
        for group in self.groups:
            for task in group:
                row = store.register(task.task_id, group.name, task.fingerprint())
                task.workdir = self.root / task.task_id
                task.attempts = 0
                if row.status is TaskStatus.FINISHED:
                    task.status, task.result = TaskStatus.FINISHED, row.result
                    task.used_device = row.device
                    skipped.append(task.task_id)
                    if row.peak_memory is not None:
                        self.estimates.learn(group.name, row.peak_memory)
                elif row.status is TaskStatus.FAILED and not self.retry_failed:
                    task.status, task.stage, task.error = row.status, row.stage, row.error
                    task.traceback, task.exit_code = row.traceback, row.exit_code
                else:
                    store.retry(task.task_id)
                    task.status = TaskStatus.WAITING
        return skipped

    def _run_group(self, group: TaskGroup) -> None:
        group.workdir = self.root / GROUPS_DIR / group.name
        group.workdir.mkdir(parents=True, exist_ok=True)
        self._queue = deque(t for t in group if t.status is TaskStatus.WAITING)
        while self._queue or self._running:
            self._start_processes(group)
            blocked = self._place_loaded()
            if self._running:
                self._wait(self.recheck_seconds if blocked else None)

    # --- starting and placing ----------------------------------------------------------------

    def _start_processes(self, group: TaskGroup) -> None:
        loading = sum(r.status is TaskStatus.LOADING for r in self._running.values())
        while (self._queue and len(self._running) < self.max_processes
               and loading < self.max_loading):
            task = self._queue.popleft()
            if self._start(task, group):
                loading += 1

    def _start(self, task: Task, group: TaskGroup) -> bool:
        store = self._require_store()
        if not store.claim(task.task_id, attempts=task.attempts + 1):
            log.warning("task %s was not waiting in %s; not starting it", task.task_id,
                        store.path)
            return False
        task.attempts += 1
        if self._no_main_guard is not None:  # its process would run the script again too
            self._fail(task, Stage.DISPATCH, self._no_main_guard)
            return False
        workdir = self.root / task.task_id
        shutil.rmtree(workdir, ignore_errors=True)  # a previous attempt's leftovers
        self.started_at[task.task_id] = time.time()
        gpu = bool(self.devices.gpus) and group.device_of(task) != "cpu"
        try:
            task.start(workdir, threads=self._threads(gpu), start_method=self.start_method,
                       preload=self.preload)
        except SchedulerError as err:  # e.g. not picklable: this task's problem, not the run's
            self._fail(task, Stage.DISPATCH, str(err))
            return False
        process = task.process
        assert process is not None  # start() made it
        task.start_load()
        store.started(task.task_id, process.pid)
        self._running[task.task_id] = _Running(task=task, group=group, process=process,
                                               status=TaskStatus.LOADING, gpu=gpu)
        return True

    def _threads(self, gpu: bool) -> int:
        """Torch threads of a task: the cores shared by the tasks that can run at once."""
        cores = os.cpu_count() or 1
        return max(1, cores // (self.max_processes if gpu else max(1, self.devices.cpu_slots)))

    def _place_loaded(self) -> bool:
        """Hand devices to loaded tasks; True when one waits on GPU memory we cannot free."""
        blocked = False
        for run in list(self._running.values()):
            if run.status is not TaskStatus.LOADED:
                continue
            memory = self.estimates.of(run.task.task_id, run.group.name,
                                       run.task.memory) if run.gpu else None
            probing = any(r.probe and r.group is run.group for r in self._running.values())
            if run.gpu and memory is None and probing:
                continue  # wait for the probe's peak instead of guessing
            device = self.devices.place(run.task.task_id, memory=memory, pid=run.process.pid,
                                        pinned=run.group.device_of(run.task))
            if device is None:
                blocked = blocked or (run.gpu and not any(
                    r.status is TaskStatus.TRAINING and r.gpu for r in self._running.values()))
                continue
            run.task.start_train(device)
            run.probe = run.gpu and memory is None
            run.status = TaskStatus.TRAINING
            self._require_store().set_status(run.task.task_id, TaskStatus.TRAINING,
                                             device=device)
        return blocked

    # --- events ------------------------------------------------------------------------------

    def _wait(self, timeout: float | None) -> None:
        runs = list(self._running.values())
        ready = wait([h for run in runs for h in run.process.handles()], timeout)
        for run in runs:
            for message in run.process.messages(ready):
                self._handle(run, message)
            if run.process.exited(ready):
                self._reap(run)

    def _handle(self, run: _Running, event: Event) -> None:
        task = run.task
        if isinstance(event, Loaded):
            run.status = task.status = TaskStatus.LOADED
            self._require_store().set_status(task.task_id, TaskStatus.LOADED)
        elif isinstance(event, Finished):
            self._finish(run, event.result, event.peak_memory)
        elif isinstance(event, Failed):
            run.ended = True
            self.devices.release(task.task_id)
            error = event.error
            if event.out_of_memory and task.attempts <= self.oom_retries:
                self._put_back(run, error)
            else:
                if event.out_of_memory:
                    error = f"out of memory in all {task.attempts} attempts; last: {error}"
                self._fail(task, event.stage, error, traceback=event.traceback)

    def _finish(self, run: _Running, result: Result, peak: int | None) -> None:
        task = run.task
        run.ended = True
        self.devices.release(task.task_id)
        self._require_store().finish(task.task_id, result, peak)
        task.status, task.result = TaskStatus.FINISHED, result
        if run.gpu and (peak is not None or run.probe):
            self.estimates.learn(run.group.name, peak)

    def _put_back(self, run: _Running, error: str) -> None:
        task = run.task
        if run.gpu:
            self.estimates.out_of_memory(task.task_id, run.group.name, task.memory)
        self._require_store().requeue(task.task_id, f"out of memory: {error}")
        task.status = TaskStatus.WAITING
        run.requeue = True
        log.info("task %s ran out of memory (attempt %d); put back", task.task_id,
                 task.attempts)

    def _fail(self, task: Task, stage: Stage, error: str, *, traceback: str | None = None,
              exit_code: int | None = None) -> None:
        self._require_store().fail(task.task_id, stage=stage, error=error, traceback=traceback,
                                   exit_code=exit_code)
        task.status, task.stage, task.error = TaskStatus.FAILED, stage, error
        task.traceback, task.exit_code = traceback, exit_code
        log.warning("task %s failed in %s: %s", task.task_id, stage.value, error)

    def _reap(self, run: _Running) -> None:
        code = run.process.join()
        task = run.task
        del self._running[task.task_id]
        self.devices.release(task.task_id)
        if not run.ended:
            stage = death_stage(run.status, started=run.process.started)
            error = death_message(code, started=run.process.started, workdir=task.workdir)
            if code == NO_MAIN_GUARD and not run.process.started:
                self._no_main_guard = error
            self._fail(task, stage, error, exit_code=code)
        elif run.requeue:
            self._queue.append(task)

    def _stop_all(self) -> None:
        """Kill every task process (on Ctrl-C or an error); their tasks go back to waiting."""
        for run in self._running.values():
            run.process.kill()
        for run in self._running.values():
            run.process.join()
            self.devices.release(run.task.task_id)
            if not run.ended:
                run.task.status = TaskStatus.WAITING
        self._running.clear()

    def _require_store(self) -> StateStore:
        if self._store is None:
            raise RuntimeError("the scheduler is not running")
        return self._store
