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
import time

from fedloom.app.build import build_run
from fedloom.app.config import load_config
from fedloom.runtime.loop import ServerLoop

CONFIG = "configs/fedavg_mnist_2nn_iid.yaml"
RUNS = {"none": ("float32", []),
        "fp16": ("fp16", ["compression.downlink=fp16"]),
        "delta": ("delta (8-bit QSGD changes)", ["compression.downlink=delta"]),
        "topk": ("float32 + top-k 1% up", ["compression.uplink=topk"]),
        "delta+topk": ("delta + top-k 1% up", ["compression.downlink=delta",
                                               "compression.uplink=topk"])}


def run(overrides: list[str], *, target: float,
        until_target: bool) -> tuple[list[dict[str, object]], float]:
    loop = build_run(load_config(CONFIG, ["eval.every=1", *overrides]))
    assert isinstance(loop, ServerLoop)
    if until_target:
        loop.stop_before = lambda rnd: (
            "target reached" if loop.rows and float(loop.rows[-1]["test_accuracy"])  # type: ignore[arg-type]
            >= target else None)
    start = time.perf_counter()
    rows = [dict(r) for r in loop.run().rows]
    return rows, time.perf_counter() - start


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
        rows, seconds = run([*common, *args.overrides, *extra], target=args.target,
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
