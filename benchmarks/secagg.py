"""The cost of secure aggregation per protocol stage (the SecAgg cost table of the README).

For each cohort size, one round of SecAgg+ over updates of the MNIST 2NN's size (199,210
values), run in memory with the very messages a deployment sends: seconds per client (mean),
seconds on the server, and payload bytes per client down and up. ``--dropout`` of the cohort
drops out before sending its masked input (the case whose masks the server rebuilds from
shares). Usage: ``python benchmarks/secagg.py [--clients 10 50 100] [--out FILE]``.
"""

from __future__ import annotations

import fedloom  # noqa: F401  # isort: skip  (before torch: fedloom.core.openmp)

import argparse
import math
import time
from pathlib import Path

import torch

from fedloom.secagg import RoundSetup, SecAggConfig, Stage, encode, run_in_memory

MNIST_2NN = 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10


def degree(n: int) -> int:
    """SecAgg+'s logarithmic degree, even, below the cohort."""
    return min(n - 1 - (n - 1) % 2, 2 * math.ceil(math.log2(n)))


def one(n: int, dropout: float, size: int) -> list[str]:
    k = degree(n)
    cfg = SecAggConfig(enabled=True, neighbours=k)
    setup = RoundSetup.make(cfg, cohort=list(range(n)), round=1, seed=0, update_size=size)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    inputs = {c: encode(torch.randn(size, generator=gen) * 0.01, 600, setup.quantizer)
              for c in range(n)}
    encode_s = (time.perf_counter() - start) / n
    dropped = list(range(0, n, max(1, round(1 / dropout)))) if dropout else []
    out = run_in_memory(setup, inputs, drop={Stage.MASKED_INPUT: dropped})
    rows = [f"| {n} | {k} | {setup.threshold} | encode | {encode_s:.3f} | 0 | 0 | 0 |"]
    for c in out.costs:
        per = max(c.clients, 1)
        rows.append(f"| {n} | {k} | {setup.threshold} | {c.stage} | "
                    f"{c.client_seconds / per:.3f} | {c.server_seconds:.3f} | "
                    f"{c.bytes_down / len(setup.cohort):,.0f} | {c.bytes_up / per:,.0f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--size", type=int, default=MNIST_2NN)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lines = [f"update: {args.size:,} values (MNIST 2NN), ring Z_2^64 (8 bytes a value), "
             f"{args.dropout:.0%} of the cohort dropping before the masked input", "",
             "| clients | neighbours k | threshold t | stage | client s (each) | server s | "
             "bytes down per client | bytes up per client |",
             "|---|---|---|---|---|---|---|---|"]
    for n in args.clients:
        lines += one(n, args.dropout, args.size)
        print("\n".join(lines[-5:]), flush=True)
    text = "\n".join(lines) + "\n"
    if args.out is not None:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
