"""Sweeps: a grid of run configs x seeds, each a task running a simulation in its own work dir.

A sweep file (YAML, checked strictly: every problem is reported at once, each naming its key)::

    name: lr_sweep                    # default: the file's name; names the default --out dir
    base: fedavg_mnist_2nn_iid.yaml   # run config, relative to this file or the cwd
    overrides: [rounds=3]             # applied to every task
    grid:                             # cartesian product of dotted run-config keys
      client.lr: [0.05, 0.1]
    runs:                             # and/or a list of named variants (crossed with the grid)
      - {id: fedprox, overrides: [algorithm.name=fedprox, algorithm.mu=0.01]}
    seeds: [0, 1, 2]                  # one task per configuration and seed
    target_accuracy: 0.9              # for "rounds to target" in the report
    slots: {cpu: 2, per_gpu: 4}       # CPU slots; most tasks on one GPU
    memory_mb: 2000                   # GPU memory per task (default: learned from the first)
    oom_retries: 2

Every task's config is built with :func:`fedloom.app.config.load_config` before anything runs
(:mod:`fedloom.sweeps.sweep_file`), so a key that does not exist in the run config stops the
sweep with the key and the reason. Output::

    OUT/sweep.json  OUT/state.sqlite  OUT/tasks/<task_id>/{metrics.jsonl,...}  OUT/report.html
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedloom.app.config import RunConfig, load_config
from fedloom.reporting.report import ReportFiles, summarize_rows, write_report
from fedloom.runtime.sinks import read_rows
from fedloom.scheduler.devices import DevicePool
from fedloom.scheduler.group import TaskGroup
from fedloom.scheduler.scheduler import RunSummary, Scheduler
from fedloom.scheduler.task import Result, Task
from fedloom.sweeps.sweep_file import Sweep, SweepPoint, load_sweep

__all__ = ["Sweep", "SweepOutcome", "SweepPoint", "SweepTask", "load_sweep", "run_sweep",
           "write_manifest"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepOutcome:
    out: Path
    summary: RunSummary
    report: ReportFiles


class SweepTask(Task):
    """Runs one sweep point with :func:`fedloom.app.experiment.run_experiment`, writing
    its run directory into the task's work dir."""

    def __init__(self, point: SweepPoint, *, base: Path | None, target_accuracy: float | None,
                 memory: int | None = None) -> None:
        super().__init__(point.task_id, memory=memory)
        self.point = point
        self.base = base
        self.target_accuracy = target_accuracy
        self._config: RunConfig | None = None

    def fingerprint(self) -> str:
        return f"sweep:{self.point.fingerprint}"

    def load(self) -> None:
        """Build the config, read the data and build the model once (a missing dataset or a
        model that does not fit the data fails here, in the load stage)."""
        import fedloom.app.experiment  # noqa: F401  (the imports belong to the CPU phase)
        from fedloom.data import load_federated
        from fedloom.models import model_factory

        cfg = self._config = load_config(self.base, self.point.overrides)
        data = load_federated(cfg.data, seed=cfg.seed)
        model_factory(cfg.model, data.input_shape, data.num_classes)()

    def train(self, device: str) -> Result:
        import torch

        from fedloom.app.experiment import run_experiment

        cfg = self._config or load_config(self.base, self.point.overrides)
        assert self.workdir is not None
        fleet = dataclasses.replace(cfg.fleet, devices=device,
                                    threads=cfg.fleet.threads or torch.get_num_threads())
        cfg = dataclasses.replace(cfg, name=self.task_id, out=str(self.workdir), fleet=fleet)
        history = run_experiment(cfg, console=False)
        return dict(summarize_rows(history.history.rows, self.target_accuracy))

    def progress(self) -> Mapping[str, object]:
        if self.workdir is None:
            return {}
        rows = read_rows(self.workdir / "metrics.jsonl")
        accuracy = [r["test_accuracy"] for r in rows if r.get("test_accuracy") is not None]
        return {"round": rows[-1].get("round") if rows else None,
                "accuracy": accuracy[-1] if accuracy else None}


def write_manifest(sweep: Sweep, out: Path) -> Path:
    """``out/sweep.json``: what the report needs to group tasks into configurations."""
    manifest = {
        "name": sweep.name, "sweep_file": str(sweep.path), "target_accuracy": sweep.target_accuracy,
        "grid_keys": list(sweep.grid_keys),
        "tasks": [{"task_id": pt.task_id, "config_id": pt.config_id, "seed": pt.seed,
                   "params": pt.params} for pt in sweep.points],
    }
    path = out / "sweep.json"
    path.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return path


def run_sweep(path: str | Path, *, out: str | Path | None = None, overrides: Sequence[str] = (),
              progress: bool = False, devices: DevicePool | None = None) -> SweepOutcome:
    """Validate the sweep, run its tasks (resuming a previous run in ``out``), write the report.

    ``out`` defaults to ``runs/<name>``, so running the same command again resumes.
    """
    sweep = load_sweep(path, overrides)
    out_dir = Path(out) if out is not None else Path("runs") / sweep.name
    out_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(sweep, out_dir)
    pool = devices or DevicePool.detect(cpu_slots=sweep.cpu_slots, per_gpu=sweep.per_gpu)
    scheduler = Scheduler(
        out_dir / "tasks", state=out_dir / "state.sqlite", devices=pool,
        memory=None if sweep.memory_mb is None else sweep.memory_mb << 20,
        oom_retries=sweep.oom_retries, progress=progress,
        preload=("fedloom.app.experiment", "matplotlib.pyplot", "torch._dynamo"))
    group = scheduler.add_group(TaskGroup(sweep.name))
    for point in sweep.points:
        group.add_task(SweepTask(point, base=sweep.base, target_accuracy=sweep.target_accuracy))
    try:
        summary = scheduler.run()
    except BaseException:
        with contextlib.suppress(Exception):  # a partial report, if the run got far enough
            write_report(out_dir)
        raise
    report = write_report(out_dir)
    return SweepOutcome(out=out_dir, summary=summary, report=report)
