"""``fedloom run``: a config run end to end into its run directory (see :mod:`.rundir`).

Example:
    >>> # run_experiment(load_config("configs/default.yaml", ["rounds=5"])).out
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedloom.app.build import build_run, serve_worker
from fedloom.app.config import RunConfig
from fedloom.app.rundir import close_run_dir, default_out, open_run_dir
from fedloom.core.forking import start_fork_server
from fedloom.fleets.config import FleetKind
from fedloom.runtime.checkpoint import Checkpointer
from fedloom.runtime.loop import History
from fedloom.runtime.sinks import ConsoleSink, Sink, file_sinks


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """A finished run: its rows (those of this call), final state and run directory;
    ``served``: this process only served another's fleet (a torchrun rank other than 0)."""

    history: History
    out: Path
    served: bool = False


def run_experiment(cfg: RunConfig, *, console: bool = True,
                   resume: str | Path | None = None) -> RunResult:
    """Run a config end to end, writing its run directory (``cfg.out``, or a fresh one).

    With ``resume`` (a run directory holding a checkpoint, ``checkpoint.every`` > 0) the run
    continues from its last checkpoint and ends as the uninterrupted run would have (bitwise
    for synchronous algorithms on every fleet but ``vectorized``). On Ctrl-C or an error
    mid-run the directory still gets the model of the last completed round and the plot of the
    rounds done. On a worker rank of the distributed fleet (torchrun rank > 0) it only serves
    rank 0, which writes the run directory, and returns no rows.
    """
    out = Path(resume) if resume is not None else (Path(cfg.out) if cfg.out
                                                   else default_out(cfg.name))
    every = cfg.checkpoint.every
    if cfg.fleet.kind is FleetKind.PROCESS:  # its workers' imports overlap loading the data
        start_fork_server()
    run = build_run(cfg, checkpointer=Checkpointer(out, every=every) if every else None)
    if run.fleet.is_worker:
        serve_worker(run)
        return RunResult(history=History(rows=(), final=run.state, layout=run.layout), out=out,
                         served=True)
    try:
        open_run_dir(run, cfg, out=out, resume=resume is not None)
        sinks: list[Sink] = file_sinks(out, cfg.sinks, resumed_after=run.state.round)
    except BaseException:
        run.fleet.close()  # a distributed fleet's workers are waiting: tell them to stop
        raise
    if console:
        sinks.append(ConsoleSink(cfg.rounds, title=cfg.name, done=run.state.round))
    run.sinks.extend(sinks)
    try:
        history = run.run()
    finally:
        for sink in sinks:
            sink.close()
        close_run_dir(out, run.layout, run.state, cfg.name)
    return RunResult(history=history, out=out)
