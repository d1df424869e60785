"""W5 (BENCHMARKS.md): memory and time per round must not grow with the registered clients.

Logistic regression on the ``generated`` population (clients made on demand), 100 clients per
round, one SGD step each, central evaluation every round; the serial fleet. Each population size
runs in a fresh process (peak resident memory is per process), alternating sizes over
repetitions; reported: peak resident memory and the median seconds per round after the first.
Target: 1e3 vs 1e6 registered clients within 10% on memory.

Run: ``python benchmarks/bench_population.py [--sizes 1000 1000000] [--rounds 30] [--reps 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def one_run(num_clients: int, rounds: int) -> dict[str, float]:
    """Build and run in this process; peak memory and per-round seconds."""
    import resource

    from fedloom.app.build import build_run
    from fedloom.app.config import load_config

    cfg = load_config(None, [
        "data.name=generated", f"data.num_clients={num_clients}", "model.name=logreg",
        "cohort.size=100", "client.steps=1", "client.batch_size=10", "client.lr=0.05",
        f"rounds={rounds}", "fleet.threads=1"])
    sim = build_run(cfg)
    history = sim.run()
    seconds = [float(r["round_seconds"]) for r in history.rows[1:]]
    return {"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "round_s": statistics.median(seconds),
            "accuracy": float(history.rows[-1]["test_accuracy"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one_run(args.child, args.rounds)))
        return
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in args.sizes}
    for _ in range(args.reps):
        for n in args.sizes:
            out = subprocess.run([sys.executable, __file__, "--child", str(n),
                                  "--rounds", str(args.rounds)], check=True,
                                 capture_output=True, text=True)
            runs[n].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"W5: generated population, logreg, 100 clients/round, 1 step, serial fleet, "
          f"{args.rounds} rounds, {args.reps} runs each (load {os.getloadavg()[0]:.1f})")
    base = args.sizes[0]
    base_mem = max(r["peak_mib"] for r in runs[base])
    base_s = statistics.median(r["round_s"] for r in runs[base])
    for n in args.sizes:
        mem = max(r["peak_mib"] for r in runs[n])
        sec = statistics.median(r["round_s"] for r in runs[n])
        print(f"  {n:>9,} registered: peak {mem:7.1f} MiB ({mem / base_mem:.3f}x), "
              f"{sec * 1e3:6.1f} ms/round ({sec / base_s:.2f}x), final accuracy "
              f"{runs[n][-1]['accuracy']:.3f}")


if __name__ == "__main__":
    main()
