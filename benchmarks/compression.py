"""Uplink compression on W1 (FedAvg, MNIST 2NN, IID, 10 clients a round): each codec's final
test accuracy, the first round at the target accuracy and the total uplink bytes, beside float32.

    .venv/bin/python benchmarks/compression.py --rounds 10

Prints a Markdown table. Top-k and random-k keep 1% of the values (compression.ratio=0.01) with
error feedback; QSGD uses 127 levels per sign (8 bits a value) and a norm per 4096 values.
"""

from __future__ import annotations

import argparse
import time

from fedloom.app.build import build_run
from fedloom.app.config import load_config

CODECS = {"none (float32)": [], "fp16": ["compression.uplink=fp16"],
          "bf16": ["compression.uplink=bf16"],
          "qsgd (127 levels)": ["compression.uplink=qsgd", "compression.levels=127"],
          "topk (1%, EF)": ["compression.uplink=topk", "compression.ratio=0.01"],
          "randk (1%, EF)": ["compression.uplink=randk", "compression.ratio=0.01"],
          "sign (EF)": ["compression.uplink=sign"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/fedavg_mnist_2nn_iid.yaml")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    print(f"| uplink | final test accuracy | first round at {args.target:.0%} | total bytes_up "
          "| vs float32 | seconds |")
    print("|---|---|---|---|---|---|")
    base = None
    for name, extra in CODECS.items():
        cfg = load_config(args.config, [f"rounds={args.rounds}", "eval.every=1",
                                        *args.overrides, *extra])
        start = time.perf_counter()
        rows = build_run(cfg).run().rows
        seconds = time.perf_counter() - start
        up = sum(int(r["bytes_up"]) for r in rows)  # type: ignore[call-overload]
        base = base or up
        hits = [r["round"] for r in rows if float(r["test_accuracy"]) >= args.target]  # type: ignore[arg-type]
        print(f"| {name} | {float(rows[-1]['test_accuracy']):.4f} | "  # type: ignore[arg-type]
              f"{hits[0] if hits else '-'} | {up:,} | {base / up:.1f}x fewer | {seconds:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
