"""``fedloom topology``: what a topology is, as text (its federated groups) and as a picture
(nodes coloured by role, each leaf's clients counted; a gossip graph on a circle)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from fedloom.topology.tree import Tree

ROLE_COLOURS = {"root": "tab:red", "aggregator": "tab:orange", "leaf": "tab:blue",
                "node": "tab:green"}


def describe_tree(tree: Tree) -> str:
    """One line per aggregator: its collaborators (aggregators by name, clients by id range)."""
    lines = []
    for node in tree.nodes.values():
        role = "root" if node.name == tree.root else "aggregator"
        if node.is_leaf:
            below = f"{len(node.clients)} clients ({_ranges(node.clients)})"
        else:
            below = ", ".join(node.children)
        algorithm = node.config.algorithm.name if node.config.algorithm else "the run's"
        lines.append(f"{'  ' * node.depth}{node.name} [{role}, {node.config.rounds} round(s) "
                     f"per parent round, algorithm {algorithm}] <- {below}")
    return "\n".join(lines)


def describe_graph(n: int, links: Sequence[tuple[int, int]]) -> str:
    degrees = [0] * n
    for a, b in links:
        degrees[a] += 1
        degrees[b] += 1
    lines = [f"gossip: {n} nodes, {len(links)} links, degree {min(degrees)}..{max(degrees)}"]
    for i in range(min(n, 20)):
        neighbours = [str(b if a == i else a) for a, b in links if i in (a, b)]
        lines.append(f"  {i} <-> {', '.join(neighbours)}")
    if n > 20:
        lines.append("  ...")
    return "\n".join(lines)


def plot_tree(tree: Tree, path: Path) -> Path:
    """Aggregators by depth, top to bottom; the leaves' clients as a count beneath them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels: dict[int, list[str]] = {}
    for node in tree.nodes.values():
        levels.setdefault(node.depth, []).append(node.name)
    where = {name: ((i + 1) / (len(names) + 1), -depth)
             for depth, names in levels.items() for i, name in enumerate(names)}
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * max(len(v) for v in levels.values())),
                                    1.8 * (len(levels) + 1)))
    for node in tree.nodes.values():
        x, y = where[node.name]
        for child in node.children:
            cx, cy = where[child]
            ax.plot([x, cx], [y, cy], color="grey", zorder=1)
        role = "root" if node.name == tree.root else "leaf" if node.is_leaf else "aggregator"
        ax.scatter([x], [y], s=900, color=ROLE_COLOURS[role], zorder=2)
        ax.annotate(node.name, (x, y), ha="center", va="center", color="white", fontsize=9)
        if node.is_leaf:
            ax.plot([x, x], [y, y - 0.45], color="grey", linestyle=":", zorder=1)
            ax.annotate(f"{len(node.clients)} clients", (x, y - 0.6), ha="center", fontsize=8)
    for role, colour in list(ROLE_COLOURS.items())[:3]:
        ax.scatter([], [], color=colour, label=role)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_ylim(-len(levels) - 0.2, 0.6)
    ax.set_xlim(0, 1)
    ax.axis("off")
    ax.set_title(f"hierarchy: {len(tree.nodes)} aggregators, "
                 f"{len(tree.clients_below(tree.root))} clients")
    return _save(fig, path)


def plot_graph(n: int, links: Sequence[tuple[int, int]], path: Path) -> Path:
    """A gossip graph's nodes on a circle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = [(math.cos(2 * math.pi * i / n), math.sin(2 * math.pi * i / n)) for i in range(n)]
    fig, ax = plt.subplots(figsize=(6, 6))
    for a, b in links:
        ax.plot([xy[a][0], xy[b][0]], [xy[a][1], xy[b][1]], color="grey", lw=0.8, zorder=1)
    ax.scatter([p[0] for p in xy], [p[1] for p in xy], s=max(30, 3000 // n),
               color=ROLE_COLOURS["node"], zorder=2)
    if n <= 40:
        for i, (x, y) in enumerate(xy):
            ax.annotate(str(i), (x * 1.1, y * 1.1), ha="center", va="center", fontsize=8)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"gossip: {n} nodes, {len(links)} links")
    return _save(fig, path)


def _save(fig: object, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(path, dpi=100)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path


def _ranges(ids: Sequence[int]) -> str:
    """``0-4, 7, 9-10``."""
    ids = sorted(ids)
    parts, start = [], None
    for i, c in enumerate(ids):
        if start is None:
            start = c
        if i + 1 == len(ids) or ids[i + 1] != c + 1:
            parts.append(str(start) if start == c else f"{start}-{c}")
            start = None
    return ", ".join(parts)
