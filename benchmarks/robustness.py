"""Robust aggregators against attacks on MNIST (issue 13): the final test accuracy of every
(aggregator x attack) pair, and the backdoor's success rate.

MNIST 2NN (W1's model), Dirichlet(0.5) label skew over 100 clients, 10 per round, FedAvg with
E=1, B=10, client lr 0.1, 20% of the clients malicious (chosen by (seed, client_id)), seed 0,
the vectorized fleet on one thread. "diverged": the attack destroyed the model and the honest
clients' next updates were NaN (the run stops there, as a simulation does when a round falls
short of results). Aggregators and attacks run with their defaults, except
f=2 for Krum/multi-Krum (2 of 10 expected malicious) and f=1 for Bulyan (n >= 4f + 3 with 10).
Writes a Markdown table to ``--table``; ``python benchmarks/robustness.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fedloom.app.build import build_run
from fedloom.app.config import load_config
from fedloom.core.errors import ClientError

AGGREGATORS = [
    ("mean", []), ("median", []), ("trimmed_mean", ["aggregator.beta=0.2"]),
    ("krum", ["aggregator.f=2"]), ("multi_krum", ["aggregator.f=2"]),
    ("bulyan", ["aggregator.f=1"]), ("geometric_median", []), ("norm_bound", []),
    ("centered_clip", []),
]
ATTACKS = ["none", "label_flip", "sign_flip", "gaussian", "backdoor", "alie", "ipm"]


def run(aggregator: str, options: list[str], attack: str, rounds: int) -> dict[str, float]:
    cfg = load_config("configs/fedavg_mnist_2nn_iid.yaml", [
        f"rounds={rounds}", "data.partition=dirichlet", "data.alpha=0.5",
        "fleet.kind=vectorized", "fleet.threads=1", f"eval.every={rounds}",
        f"aggregator.name={aggregator}", *options, f"attack.name={attack}",
        "attack.fraction=0.2"])
    try:
        rows = build_run(cfg).run().rows
    except ClientError as err:  # the model was destroyed: honest clients' training gave NaN
        print(f"{aggregator} {attack}: {err}", flush=True)
        return {"accuracy": float("nan"), "backdoor": float("nan"), "fallbacks": 0.0}
    last = rows[-1]
    return {"accuracy": float(last["test_accuracy"] or 0.0),  # type: ignore[arg-type]
            "backdoor": float(last.get("backdoor_accuracy") or 0.0),  # type: ignore[arg-type]
            "fallbacks": sum(float(r.get("aggregator_fallback") or 0.0)  # type: ignore[arg-type]
                             for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--table", type=Path, default=Path("/tmp/work/robust_table.md"))
    parser.add_argument("--only", nargs="*", default=None, help="aggregators to run")
    args = parser.parse_args()
    header = ["aggregator", *ATTACKS, "backdoor success"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, options in AGGREGATORS:
        if args.only and name not in args.only:
            continue
        cells, backdoor = [], 0.0
        for attack in ATTACKS:
            start = time.perf_counter()
            got = run(name, options, attack, args.rounds)
            cells.append("diverged" if got["accuracy"] != got["accuracy"]
                         else f"{got['accuracy']:.3f}")
            if attack == "backdoor":
                backdoor = got["backdoor"]
            print(f"{name} {attack}: {got} ({time.perf_counter() - start:.0f} s)", flush=True)
        lines.append(f"| {name} {' '.join(o.split('.', 1)[1] for o in options)} | "
                     + " | ".join(cells) + f" | {backdoor:.3f} |")
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
