"""Evaluation off the critical path (``eval.overlap``) on W1 with evaluation every round.

Each side is a whole W1 run (MNIST 2NN, 100 IID clients, 10 a round, E=1, B=10, central
evaluation of the 10,000 test images after every round) built by the one build path, with
evaluation in line or on a background thread while the next round trains. Overlap pays where
the fleet leaves cores idle, so the process fleet is run with fewer workers than cores and
with as many; the serial fleet (every core busy) is the reference. Reported: the median round
time over the rounds after the first (a round's ``round_seconds`` is its critical path; with
overlap the wait for the previous evaluation is in the next round), the whole run's wall time,
and the final accuracy (equal by construction). Run:
``python benchmarks/bench_eval_overlap.py --rounds 8``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

from fedloom.app.build import build_run
from fedloom.app.config import load_config

CONFIG = "configs/fedavg_mnist_2nn_iid.yaml"


def run(overrides: list[str]) -> tuple[float, float, float]:
    """Wall seconds of the run, median seconds between row completions after round 1, and the
    final test accuracy."""
    loop = build_run(load_config(CONFIG, overrides))
    done: list[float] = []

    class Stamp:
        def log(self, row: object) -> None:
            done.append(time.perf_counter())

        def close(self) -> None:
            pass

    loop.sinks.append(Stamp())  # type: ignore[union-attr]
    start = time.perf_counter()
    rows = loop.run().rows
    wall = time.perf_counter() - start
    gaps = [b - a for a, b in itertools.pairwise(done)]
    return wall, statistics.median(gaps), float(rows[-1]["test_accuracy"] or 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    base = [f"rounds={args.rounds}", "eval.every=1", "seed=0"]
    sides = {
        f"serial ({cores} threads)": ["fleet.kind=serial"],
        "process, 1 worker": ["fleet.kind=process", "fleet.workers=1", "fleet.threads=1"],
        f"process, {cores} workers": ["fleet.kind=process", f"fleet.workers={cores}",
                                      "fleet.threads=1"],
    }
    print(f"W1, {args.rounds} rounds, evaluation every round, {cores} cores "
          f"(load average {os.getloadavg()[0]:.1f})")
    run([*base[1:], "rounds=2", "fleet.kind=serial"])  # warm-up: data files, allocator, kernels
    print(f"{'fleet':<22} {'eval':<10} {'wall s':>8} {'round s':>8} {'accuracy':>9}")
    for name, overrides in sides.items():
        inline = run([*base, *overrides, "eval.overlap=false"])
        overlap = run([*base, *overrides, "eval.overlap=true"])
        for label, (wall, gap, acc) in (("in line", inline), ("overlap", overlap)):
            print(f"{name:<22} {label:<10} {wall:8.2f} {gap:8.2f} {acc:9.4f}")
        walls, gaps = inline[0] / overlap[0], inline[1] / overlap[1]
        print(f"{'':<22} {'speed-up':<10} {walls:7.2f}x {gaps:7.2f}x")


if __name__ == "__main__":
    main()
