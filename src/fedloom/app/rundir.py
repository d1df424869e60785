"""A run directory: where it goes, what a finished (or stopped) run leaves in it.

``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON object per round, the source
of truth; written by :class:`~fedloom.runtime.sinks.JsonlSink`), ``model.safetensors`` (the
model of the last completed round), ``metrics.png`` and, when checkpointing, the checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fedloom.app.config import RunConfig, config_to_yaml, load_config
from fedloom.core.errors import ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ServerState
from fedloom.runtime.checkpoint import load_checkpoint
from fedloom.runtime.sinks import JsonlSink, Row, read_rows, top_rows

if TYPE_CHECKING:
    from fedloom.app.build import Run

log = logging.getLogger(__name__)


def default_out(name: str) -> Path:
    """``runs/<name>-<time>``: where a run goes when its config names no ``out``."""
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_out(out: Path) -> Path:
    """Create ``out``; refuse one that already holds a run."""
    if (out / "metrics.jsonl").exists():
        raise ConfigError(f"out = {str(out)!r}: already holds a run (metrics.jsonl); "
                          "choose another out=... or remove it")
    out.mkdir(parents=True, exist_ok=True)
    return out


def open_run_dir(run: Run, cfg: RunConfig, *, out: Path,
                 resume: bool) -> Path:
    """A fresh run directory with ``config.yaml``; or, resuming, ``out``'s run continued: the
    config must be the run's own, ``run`` is restored from the checkpoint and ``metrics.jsonl``
    is cut back to the checkpoint's rows (rounds written after it are run again)."""
    if not resume:
        prepare_out(out)
        (out / "config.yaml").write_text(config_to_yaml(cfg), encoding="utf-8")
        return out
    saved = load_config(out / "config.yaml")
    if _without_out(saved) != _without_out(cfg):
        raise ConfigError(f"--resume {out}: the config given differs from the run's "
                          f"{out / 'config.yaml'} (resume with the same config, or none)")
    run.restore(load_checkpoint(out), out)
    log.info("resuming after round %d", run.state.round)
    tmp = out / "metrics.jsonl.tmp"
    tmp.unlink(missing_ok=True)
    sink = JsonlSink(tmp)
    for row in run.rows:
        sink.log(row)
    sink.close()
    tmp.replace(out / "metrics.jsonl")
    return out


def _without_out(cfg: RunConfig) -> str:
    import dataclasses

    return config_to_yaml(dataclasses.replace(cfg, out=None))


def save_model(layout: ParamLayout, state: ServerState, out: Path) -> Path:
    """``out/model.safetensors``: the global model of ``state`` as named tensors."""
    from safetensors.torch import save_file

    path = out / "model.safetensors"
    tensors = {k: v.contiguous() for k, v in layout.unflatten(state.params).items()}
    save_file(tensors, str(path), metadata={"round": str(state.round)})
    return path


def close_run_dir(out: Path, layout: ParamLayout, state: ServerState, title: str) -> None:
    """What every run leaves however it ends: the last model and the plot of its rows."""
    save_model(layout, state, out)
    rows = top_rows(read_rows(out / "metrics.jsonl"))
    if rows:
        plot_metrics(rows, out / "metrics.png", title=title)


def plot_metrics(rows: Sequence[Row], path: Path, title: str = "") -> Path:
    """Test accuracy (left) and train/test loss (right) against the round, and a gossip run's
    consensus distance (third panel, when the rows have it); saves a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    consensus = [r for r in rows if r.get("consensus_distance") is not None]
    fig, axes = plt.subplots(1, 3 if consensus else 2, figsize=(15 if consensus else 10, 4))
    ax_acc, ax_loss = axes[0], axes[1]
    evaluated = [r for r in rows if r.get("test_accuracy") is not None]
    ax_acc.plot([r["round"] for r in evaluated], [r["test_accuracy"] for r in evaluated],
                marker=".", color="tab:blue")
    ax_acc.set(xlabel="round", ylabel="test accuracy", title="accuracy")
    ax_acc.grid(alpha=0.3)
    for key, color in (("train_loss", "tab:orange"), ("test_loss", "tab:green")):
        pts = [r for r in rows if r.get(key) is not None]
        ax_loss.plot([r["round"] for r in pts], [r[key] for r in pts], label=key, color=color)
    ax_loss.set(xlabel="round", ylabel="loss", title="loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    if consensus:
        axes[2].plot([r["round"] for r in consensus],
                     [r["consensus_distance"] for r in consensus], color="tab:purple")
        axes[2].set(xlabel="round", ylabel="mean ||x_i - mean x||^2",
                    title="consensus distance")
        axes[2].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
