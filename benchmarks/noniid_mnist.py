"""Algorithms against FedAvg on pathological non-IID MNIST (2 label shards per client).

W3-like but with the 2NN and E=1 so that every algorithm's run takes about a minute on 2 cores:
100 clients, 10 per round, B=10, client lr 0.1, seed 0. Server-side hyperparameters are the
algorithms' common defaults (listed in the table), not tuned. Prints a Markdown table;
``python benchmarks/noniid_mnist.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedloom.app.config import load_config
from fedloom.app.experiment import run_experiment

ALGORITHMS = [
    ("fedavg", []),
    ("fedprox", ["algorithm.mu=0.01"]),
    ("scaffold", []),
    ("fednova", []),
    ("feddyn", ["algorithm.alpha=0.01"]),
    ("fedavgm", ["algorithm.momentum=0.9", "algorithm.server_lr=0.1"]),
    ("fedadam", ["algorithm.server_lr=0.01"]),
    ("fedyogi", ["algorithm.server_lr=0.01"]),
    ("fedadagrad", ["algorithm.server_lr=0.01"]),
]


def first_round(accuracy: list[float], target: float) -> str:
    """The first round (1-based) whose test accuracy reaches ``target``, or "-"."""
    return next((str(i + 1) for i, a in enumerate(accuracy) if a >= target), "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/noniid_mnist"))
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    lines = ["| algorithm | options | final acc | best acc | first round >= 90% | "
             "first round >= 95% |", "|---|---|---|---|---|---|"]
    for name, options in ALGORITHMS:
        if args.only and name not in args.only:
            continue
        cfg = load_config("configs/fedavg_mnist_2nn_noniid.yaml",
                          [f"rounds={args.rounds}", f"algorithm.name={name}", *options,
                           "fleet.threads=1", f"out={args.out / name}"])
        rows = run_experiment(cfg, console=False).history.rows
        acc = [float(r["test_accuracy"] or 0) for r in rows]
        lines.append(f"| {name} | {' '.join(o.split('.', 1)[1] for o in options) or '-'} | "
                     f"{acc[-1]:.4f} | {max(acc):.4f} | {first_round(acc, 0.90)} | "
                     f"{first_round(acc, 0.95)} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
