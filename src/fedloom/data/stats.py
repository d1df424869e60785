"""How a partition spreads labels over clients: a count matrix, a text table, a bar chart."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedloom.core.errors import DataError


def label_counts(labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Examples of each class held by each client, shape (clients, classes), int64.

    Raises:
        DataError: a label is outside ``[0, num_classes)``.
    """
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"labels span [{labels.min()}, {labels.max()}], outside [0, {num_classes})"
        )
    counts = np.zeros((len(parts), num_classes), dtype=np.int64)
    for client, part in enumerate(parts):
        counts[client] = np.bincount(labels[np.asarray(part)], minlength=num_classes)
    return counts


def summary_line(counts: np.ndarray) -> str:
    """Client sizes (min/median/max) and the mean number of distinct labels per client."""
    sizes = counts.sum(axis=1)
    labels_per_client = (counts > 0).sum(axis=1)
    return (
        f"{counts.shape[0]} clients, {int(sizes.sum())} examples; client size "
        f"min/median/max = {int(sizes.min())}/{float(np.median(sizes)):g}/{int(sizes.max())}; "
        f"mean labels per client = {labels_per_client.mean():.2f}"
    )


def format_partition_table(counts: np.ndarray, max_rows: int = 20) -> str:
    """A text table: one row per client (total, then per-label counts), then a summary line.

    With more than ``max_rows`` clients, the first and last ``max_rows // 2`` are shown.

    Example:
        >>> print(format_partition_table(np.array([[3, 0], [1, 2]])))
        client  total |   0   1
             0      3 |   3   0
             1      3 |   1   2
        2 clients, 6 examples; client size min/median/max = 3/3/3; mean labels per client = 1.50
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[0] == 0:
        raise DataError(f"counts must be a non-empty (clients, classes) matrix, got {counts.shape}")
    num_clients, num_classes = counts.shape
    sizes = counts.sum(axis=1)
    client_w = max(len("client"), len(str(num_clients - 1)))
    total_w = max(len("total"), len(str(int(sizes.max()))))
    cell_w = max(3, len(str(num_classes - 1)), len(str(int(counts.max()))))
    header = " ".join(f"{c:>{cell_w}}" for c in range(num_classes))
    lines = [f"{'client':>{client_w}}  {'total':>{total_w}} | {header}"]
    shown = _shown_rows(num_clients, max_rows)
    for pos, client in enumerate(shown):
        if pos > 0 and client != shown[pos - 1] + 1:
            lines.append(f"{'...':>{client_w}}  ({client - shown[pos - 1] - 1} clients not shown)")
        cells = " ".join(f"{int(v):>{cell_w}}" for v in counts[client])
        lines.append(f"{client:>{client_w}}  {int(sizes[client]):>{total_w}} | {cells}")
    lines.append(summary_line(counts))
    return "\n".join(lines)


def _shown_rows(num_clients: int, max_rows: int) -> list[int]:
    if num_clients <= max(max_rows, 1):
        return list(range(num_clients))
    head = max(max_rows // 2, 1)
    tail = max(max_rows - head, 1)
    return [*range(head), *range(num_clients - tail, num_clients)]


def plot_label_distribution(
    counts: np.ndarray, path: str | Path, *, title: str | None = None
) -> Path:
    """Save a PNG of stacked bars, one per client, coloured by label.

    Uses matplotlib's Agg canvas directly (imported here, not at module import), so it neither
    needs a display nor changes pyplot's global backend.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[0] == 0:
        raise DataError(f"counts must be a non-empty (clients, classes) matrix, got {counts.shape}")
    num_clients, num_classes = counts.shape
    fig = Figure(figsize=(min(max(6.0, 0.08 * num_clients), 24.0), 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap_name = "tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "viridis"
    colours = _colours(cmap_name, num_classes)
    clients = np.arange(num_clients)
    bottom = np.zeros(num_clients, dtype=np.int64)
    for label in range(num_classes):
        ax.bar(clients, counts[:, label], bottom=bottom, width=0.9, color=colours[label],
               label=str(label), linewidth=0)
        bottom += counts[:, label]
    ax.set_xlabel("client")
    ax.set_ylabel("examples")
    ax.set_xlim(-0.5, num_clients - 0.5)
    ax.set_title(title or f"label distribution over {num_clients} clients")
    if num_classes <= 20:
        ax.legend(title="label", fontsize="small", ncols=1 + num_classes // 10,
                  loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    return out


def _colours(cmap_name: str, num_classes: int) -> list[tuple[float, ...]]:
    """``num_classes`` distinct colours from a matplotlib colormap."""
    from matplotlib import colormaps

    cmap = colormaps[cmap_name]
    if cmap.N <= 20:  # qualitative maps: take their entries in order
        return [tuple(cmap(i % cmap.N)) for i in range(num_classes)]
    return [tuple(cmap(x)) for x in np.linspace(0.0, 1.0, num_classes)]
