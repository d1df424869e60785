"""Downlink compression on the FedAvg paper's MNIST 2NN, IID (W1), 10 of 100 clients a round:
for each ``compression.downlink`` (with the uplink float32 or top-k 1%), the first round at the
target accuracy (97%), the bytes sent down to it, the mean bytes sent down and up a round, and
the test accuracy at the last round, beside the float32 broadcast (the first run's ratio is
1.00).

    .venv/bin/python benchmarks/downlink.py --rounds 60 --until-target

Prints a Markdown table. Every run uses one torch thread (``fleet.threads=1``) and the
vectorized fleet unless ``--set`` says otherwise. ``--until-target`` ends each run at the
round it first reaches the target.
"""

from __future__ import annotations

import argparse

from compression import run  # benchmarks/compression.py (this script's directory)

CONFIG = "configs/fedavg_mnist_2nn_iid.yaml"
RUNS = {"none": ("float32", []),
        "fp16": ("fp16", ["compression.downlink=fp16"]),
        "delta": ("delta (8-bit QSGD changes)", ["compression.downlink=delta"]),
        "topk": ("float32 + top-k 1% up", ["compression.uplink=topk"]),
        "delta+topk": ("delta + top-k 1% up", ["compression.downlink=delta",
                                               "compression.uplink=topk"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=RUNS)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--until-target", action="store_true")
    parser.add_argument("--set", nargs="+", action="extend", default=[], dest="overrides",
                        help="extra dotted config overrides")
    args = parser.parse_args()
    common = ["fleet.kind=vectorized", "fleet.threads=1", f"rounds={args.rounds}"]
    print(f"| run | last round | test accuracy there | first round at {args.target:.0%} "
          "| bytes_down to it | bytes_down a round (mean) | vs float32 | bytes_up a round "
          "| seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = None
    for key in args.runs:
        name, extra = RUNS[key]
        rows, seconds = run(CONFIG, [*common, *args.overrides, *extra], target=args.target,
                            until_target=args.until_target)
        hit = next((i for i, r in enumerate(rows)
                    if float(r["test_accuracy"]) >= args.target), None)  # type: ignore[arg-type]
        downs = [int(r["bytes_down"]) for r in rows]  # type: ignore[call-overload]
        ups = [int(r["bytes_up"]) for r in rows]  # type: ignore[call-overload]
        mean = sum(downs) / len(downs)
        base = base or mean
        print(f"| {name} | {rows[-1]['round']} | {float(rows[-1]['test_accuracy']):.4f} | "  # type: ignore[arg-type]
              f"{'-' if hit is None else rows[hit]['round']} | "
              f"{'-' if hit is None else f'{sum(downs[:hit + 1]):,}'} | {mean:,.0f} | "
              f"{base / mean:.2f}x fewer | {sum(ups) / len(ups):,.0f} | {seconds:.0f} |",
              flush=True)

if __name__ == "__main__":
    main()
