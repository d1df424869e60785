"""FedProx paper (Li et al., MLSys 2020) on fedloom: FedAvg vs FedProx (mu=1) on the synthetic
datasets with 90% stragglers, plus IID data without stragglers (where mu=1 should be slower).

Runs every config of configs/fedprox_paper/ (with eval.train=true for the global training loss,
the paper's metric) and prints a Markdown table. ``python benchmarks/fedprox_paper.py
[--rounds N] [--out DIR]``; about 2-3 minutes per run on one core.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedloom.app.config import load_config
from fedloom.app.experiment import run_experiment

RUNS = [(f"{ds}_{algo}", extra) for ds in ("synthetic_iid", "synthetic_0_0", "synthetic_0.5_0.5",
                                           "synthetic_1_1") for algo in ("fedavg", "fedprox")
        for extra in ([],)] + [
    ("synthetic_iid_fedavg", ["client.straggler_fraction=0"]),
    ("synthetic_iid_fedprox", ["client.straggler_fraction=0"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("runs/fedprox_paper"))
    args = parser.parse_args()
    lines = ["| dataset | stragglers | algorithm | final train loss | final test acc | "
             "train loss at round 50 |", "|---|---|---|---|---|---|"]
    for name, extra in RUNS:
        stragglers = "0%" if extra else "90%"
        out = args.out / f"{name}-{stragglers.rstrip('%')}"
        cfg = load_config(f"configs/fedprox_paper/{name}.yaml",
                          [f"rounds={args.rounds}", "eval.train=true", "eval.every=5",
                           "fleet.threads=1", f"out={out}", *extra])
        rows = [r for r in run_experiment(cfg, console=False).history.rows
                if r.get("global_train_loss") is not None]
        mid = next((r for r in rows if r["round"] >= 50), rows[-1])
        dataset, algo = name.rsplit("_", 1)
        lines.append(f"| {dataset} | {stragglers} | {algo} | {rows[-1]['global_train_loss']:.4f} "
                     f"| {rows[-1]['test_accuracy']:.4f} | {mid['global_train_loss']:.4f} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
