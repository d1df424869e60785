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
    path = args.config if args.config is not None else Path(args.resume) / "config.yaml"
    return load_config(path, args.overrides)


def report(result: RunResult) -> int:
    """The final accuracy and the run directory, printed; the command's exit code."""
    last = [r for r in result.history.rows if r.get("test_accuracy") is not None]
    if last:
        print(f"final test accuracy {last[-1]['test_accuracy']:.4f} after round "
              f"{last[-1]['round']}")
    print(f"run directory: {result.out}")
    return 0
