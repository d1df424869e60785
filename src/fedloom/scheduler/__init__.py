"""Run many experiments on one machine: tasks in their own processes, devices by free memory.

``Task`` (``load()`` on the CPU, then ``train(device) -> dict`` with the device also in
``self.device``) and ``TaskGroup`` (groups run in order, their tasks in parallel), with
Fedflow's names for both, run by a ``Scheduler`` whose state lives in SQLite so an interrupted
run resumes; ``fedloom sweep`` (:mod:`fedloom.sweeps.sweep`) expands a grid of run configs x
seeds into tasks and ends with a report.
"""

from fedloom.scheduler.database import StateStore, TaskRow
from fedloom.scheduler.devices import DevicePool, Nvml, open_nvml
from fedloom.scheduler.group import TaskGroup
from fedloom.scheduler.scheduler import RunSummary, Scheduler
from fedloom.scheduler.task import SchedulerError, Stage, Task, TaskStatus

__all__ = [
    "Task", "TaskGroup", "TaskStatus", "Stage", "Scheduler", "RunSummary", "SchedulerError",
    "DevicePool", "Nvml", "open_nvml", "StateStore", "TaskRow",
]
