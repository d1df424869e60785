"""Uplink compression on the FedAvg paper's MNIST 2NN, IID (W1) and pathological non-IID
(2 label shards of 300 per client), 10 of 100 clients a round: each codec's rounds and total
uplink bytes to reach the target accuracy (the one float32 reaches: 97% on both, in 31 and
~170 rounds), and its final test accuracy, beside float32 run the same way.

    .venv/bin/python benchmarks/compression.py --workloads W1 --rounds 140 --until-target \
        --set fleet.kind=vectorized fleet.threads=1 fleet.compile=off

Prints a Markdown table. Top-k and random-k keep 1% of the values (compression.ratio=0.01;
``topk16``: their values in float16, compression.values=float16),
sign uses a scale per 4096 values, PowerSGD rank 2, each with error feedback; QSGD 127 levels
(8 bits a value) and 7 levels (4 bits), a norm per 4096 values, without. ``--until-target``
ends each run at the round it first reaches the target (its last row is then that round's);
without it every run goes ``--rounds`` rounds. ``--codecs`` picks some by key (float32 always
runs first: the others' ratios are to it).
"""

from __future__ import annotations

import argparse
import time

from fedloom.app.build import build_run
from fedloom.app.config import load_config
from fedloom.runtime.loop import ServerLoop

WORKLOADS = {"W1": "configs/fedavg_mnist_2nn_iid.yaml",
             "noniid": "configs/fedavg_mnist_2nn_noniid.yaml"}
CODECS = {"none": ("none (float32)", []),
          "fp16": ("fp16", ["compression.uplink=fp16"]),
          "bf16": ("bf16", ["compression.uplink=bf16"]),
          "qsgd8": ("qsgd (127 levels, 8 bit)", ["compression.uplink=qsgd",
                                                 "compression.levels=127"]),
          "qsgd4": ("qsgd (7 levels, 4 bit)", ["compression.uplink=qsgd", "compression.levels=7"]),
          "topk": ("topk (1%, EF)", ["compression.uplink=topk", "compression.ratio=0.01"]),
          "topk16": ("topk (1%, float16 values, EF)", ["compression.uplink=topk",
                                                       "compression.ratio=0.01",
                                                       "compression.values=float16"]),
          "randk": ("randk (1%, EF)", ["compression.uplink=randk", "compression.ratio=0.01"]),
          "sign": ("sign (EF)", ["compression.uplink=sign"]),
          "powersgd": ("powersgd (rank 2, EF)", ["compression.uplink=powersgd",
                                                 "compression.rank=2"])}


def run(config: str, overrides: list[str], *, target: float,
        until_target: bool) -> tuple[list[dict[str, object]], float]:
    """The run's rows (ended at the first round at ``target`` with ``until_target``) and its
    seconds."""
    loop = build_run(load_config(config, ["eval.every=1", *overrides]))
    assert isinstance(loop, ServerLoop)
    if until_target:  # stop before the round after the first at the target
        loop.stop_before = lambda rnd: (
            "target reached" if loop.rows and float(loop.rows[-1]["test_accuracy"])  # type: ignore[arg-type]
            >= target else None)
    start = time.perf_counter()
    rows = [dict(r) for r in loop.run().rows]
    return rows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--codecs", nargs="*", default=list(CODECS), choices=CODECS)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--until-target", action="store_true")
    parser.add_argument("--set", nargs="+", action="extend", default=[], dest="overrides",
                        help="extra dotted config overrides (fleet.kind=vectorized ...)")
    args = parser.parse_args()
    print(f"| workload | uplink | last round | test accuracy there | first round at "
          f"{args.target:.0%} | bytes_up to it | vs float32 | bytes_up a round | vs float32 "
          "| seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for workload in args.workloads:
        base_total = base_round = None
        for key in ["none", *(c for c in args.codecs if c != "none")]:
            name, extra = CODECS[key]
            rows, seconds = run(WORKLOADS[workload], [f"rounds={args.rounds}",
                                                      *args.overrides, *extra],
                                target=args.target, until_target=args.until_target)
            ups = [int(r["bytes_up"]) for r in rows]  # type: ignore[call-overload]
            hit = next((i for i, r in enumerate(rows)
                        if float(r["test_accuracy"]) >= args.target), None)  # type: ignore[arg-type]
            to_target = None if hit is None else sum(ups[:hit + 1])
            if key == "none":
                base_total, base_round = to_target, ups[0]
            ratio = ("-" if to_target is None or base_total is None
                     else f"{base_total / to_target:.1f}x fewer")
            print(f"| {workload} | {name} | {rows[-1]['round']} | "
                  f"{float(rows[-1]['test_accuracy']):.4f} | "  # type: ignore[arg-type]
                  f"{'-' if hit is None else rows[hit]['round']} | "
                  f"{'-' if to_target is None else f'{to_target:,}'} | {ratio} | {ups[0]:,} | "
                  f"{(base_round or ups[0]) / ups[0]:.1f}x fewer | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
