"""The accuracy/loss plot of a run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedloom.runtime.sinks import Row


def plot_metrics(rows: Sequence[Row], path: Path, title: str = "") -> Path:
    """Test accuracy (left) and train/test loss (right) against the round; saves a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
