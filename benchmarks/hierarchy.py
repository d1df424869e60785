"""Client-edge-cloud hierarchical FedAvg against flat FedAvg (Liu et al., ICC 2020).

Pathological non-IID MNIST (2 label shards per client), the 2NN, 100 clients, all of them in
every round, B=10, lr 0.1, seed 0. Every run gives each client the same work per cloud round:
``k1 * k2`` local epochs, where ``k1`` epochs separate two edge aggregations and ``k2`` edge
aggregations (10 edges of 10 clients) separate two cloud aggregations; flat FedAvg is ``k2 = 1``
with no edges. The paper's finding: for the same work, more frequent edge aggregation reaches a
target accuracy in fewer cloud rounds. Prints a Markdown table::

    python benchmarks/hierarchy.py [--rounds 30] [--work 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from noniid_mnist import first_round  # a sibling script, not a package

from fedloom.app.config import load_config
from fedloom.app.experiment import run_experiment

CONFIG = "configs/hierarchy_mnist_noniid.yaml"
EDGES = [f"edge{i}" for i in range(10)]


def hierarchy(k2: int) -> list[str]:
    nodes = ", ".join(["{name: cloud}", *(f"{{name: {e}, rounds: {k2}}}" for e in EDGES)])
    edges = ", ".join(f"[{e}, cloud]" for e in EDGES)
    return [f"topology.nodes=[{nodes}]", f"topology.edges=[{edges}]"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--work", type=int, default=2, help="local epochs per cloud round")
    parser.add_argument("--out", type=Path, default=Path("runs/hierarchy"))
    args = parser.parse_args()
    runs = [("flat FedAvg", args.work, 1, ["topology=null"])]
    runs += [(f"hierarchical, {args.work // k2} epoch(s) x {k2} edge rounds", args.work // k2,
              k2, hierarchy(k2)) for k2 in sorted({2, args.work}) if args.work % k2 == 0]
    lines = ["| run | k1 (epochs between edge aggregations) | k2 (edge rounds per cloud round) | "
             "final acc | best acc | cloud rounds to 90% | to 95% | to 97% |",
             "|---|---|---|---|---|---|---|---|"]
    for name, k1, k2, overrides in runs:
        cfg = load_config(CONFIG, [f"rounds={args.rounds}", f"client.epochs={k1}", *overrides,
                                   f"out={args.out / f'k1_{k1}_k2_{k2}'}"])
        rows = run_experiment(cfg, console=False).history.rows
        acc = [float(r["test_accuracy"] or 0) for r in rows]
        lines.append(f"| {name} | {k1} | {k2} | {acc[-1]:.4f} | {max(acc):.4f} | "
                     + " | ".join(first_round(acc, t) for t in (0.90, 0.95, 0.97)) + " |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
