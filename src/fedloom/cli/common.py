"""What the run-like commands (``fedloom run``, ``fedloom server``) share: their config, given
or read back from the run directory being resumed, and the lines they end with."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command line imports the heavy modules only when a command runs
    from fedloom.app.config import RunConfig
    from fedloom.app.experiment import RunResult


def run_config(args: argparse.Namespace) -> RunConfig:
    """``args.config`` with the overrides, or the config of the run ``args.resume`` names."""
    from fedloom.app.config import load_config
    from fedloom.core.errors import ConfigError

    if args.config is None and args.resume is None:
        raise ConfigError("give a CONFIG.yaml (or --resume RUN_DIR)")
    return load_config(_config_path(args), args.overrides)


def start_workers_early(args: argparse.Namespace) -> None:
    """Start the process fleet's fork server now, before this process imports torch, when the
    config asks for the process fleet: the server's imports then run beside this process's own
    instead of after them (about a second of a short run's start-up on 2 cores).

    Only the YAML and the overrides of ``fleet`` or ``fleet.kind`` are read here (no torch);
    anything this look cannot read is left for :func:`run_config` to report, and the server is
    then started where it always is (:func:`fedloom.app.experiment.run_experiment`) or not at
    all.
    """
    from omegaconf import OmegaConf

    if args.config is None and args.resume is None:
        return
    try:
        merged = OmegaConf.merge(OmegaConf.load(_config_path(args)), OmegaConf.from_dotlist(
            [o for o in args.overrides if o.split("=", 1)[0].strip() in ("fleet", "fleet.kind")]))
        kind = OmegaConf.select(merged, "fleet.kind")
    except Exception:  # a broken config is run_config's to report, with its own message
        return
    if kind == "process":
        from fedloom.core.forking import start_fork_server

        start_fork_server()


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config) if args.config is not None else Path(args.resume) / "config.yaml"


def report(result: RunResult) -> int:
    """The final accuracy and the run directory, printed; the command's exit code."""
    last = [r for r in result.history.rows if r.get("test_accuracy") is not None]
    if last:
        print(f"final test accuracy {last[-1]['test_accuracy']:.4f} after round "
              f"{last[-1]['round']}")
    print(f"run directory: {result.out}")
    return 0
