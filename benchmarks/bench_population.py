"""W5 (BENCHMARKS.md): memory and time per round must not grow with the registered clients.

Logistic regression on the ``generated`` population (clients made on demand), 100 clients per
round, one SGD step each, central evaluation every round; the serial fleet, one torch thread.
Each population size runs in a fresh process (peak resident memory is per process), alternating
sizes over repetitions; reported: peak resident memory and the median seconds per round after the
first. Target: 1e3 vs 1e6 registered clients within 10% on memory.

Rows (``--algorithms``): ``fedavg`` (uniform cohorts, constant clock), and the stateful
``scaffold`` (round-robin cohorts, Pareto client speeds) and ``feddyn`` (example-weighted cohorts,
lognormal client speeds), whose per-client state (c_i, h_i) lives on disk (``state_dir``, a fresh
temporary folder per run) while the server keeps c and h as running sums; and the asynchronous
``fedbuff`` (20 clients training at once on the simulated clock, the random selector; a "round"
is a model version, timed as the run's wall seconds per version).

Run: ``python benchmarks/bench_population.py [--sizes 1000 1000000] [--rounds 30] [--reps 2]
[--algorithms fedavg scaffold feddyn fedbuff]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

#: the run config of each row beyond the common one
ROWS = {
    "fedavg": [],
    "scaffold": ["algorithm.name=scaffold", "cohort.sampler=round_robin", "clock.speed=pareto"],
    "feddyn": ["algorithm.name=feddyn", "cohort.sampler=weighted", "clock.speed=lognormal"],
    "fedbuff": ["algorithm.name=fedbuff", "clock.concurrency=20", "clock.selector=random"],
}
STATEFUL = {"scaffold", "feddyn"}
ASYNC = {"fedbuff"}


def overrides(num_clients: int, rounds: int, algorithm: str) -> list[str]:
    return ["data.name=generated", f"data.num_clients={num_clients}", "model.name=logreg",
            "cohort.size=100", "client.steps=1", "client.batch_size=10", "client.lr=0.05",
            f"rounds={rounds}", "fleet.threads=1", *ROWS[algorithm]]


def one_run(num_clients: int, rounds: int, algorithm: str) -> dict[str, float]:
    """Build and run in this process; peak memory, per-round seconds, and the bytes of client
    state written to disk."""
    import resource

    from fedloom.app.build import build_run
    from fedloom.app.config import load_config
    from fedloom.core.threads import torch_threads

    with tempfile.TemporaryDirectory(prefix="fedloom-population-") as state_dir:
        extra = [f"state_dir={state_dir}"] if algorithm in STATEFUL else []
        cfg = load_config(None, [*overrides(num_clients, rounds, algorithm), *extra])
        with torch_threads(1):
            run = build_run(cfg)
            start = time.perf_counter()
            history = run.run()
            wall = time.perf_counter() - start
        on_disk = sum(os.stat(e.path).st_blocks * 512 for e in os.scandir(state_dir))
    # an asynchronous run's rows are model versions without round seconds: its wall per version
    seconds = [float(r["round_seconds"]) for r in history.rows[1:]] if algorithm not in ASYNC \
        else [wall / max(len(history.rows), 1)]
    return {"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "round_s": statistics.median(seconds) if seconds else float("nan"),
            "accuracy": float(history.rows[-1]["test_accuracy"]),
            "state_mib": on_disk / 2**20}


def child(num_clients: int, rounds: int, algorithm: str) -> dict[str, float]:
    """:func:`one_run` in a fresh interpreter."""
    out = subprocess.run([sys.executable, __file__, "--child", str(num_clients), "--rounds",
                          str(rounds), "--algorithms", algorithm], check=True,
                         capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--algorithms", nargs="+", choices=sorted(ROWS),
                        default=["fedavg", "scaffold", "feddyn", "fedbuff"])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one_run(args.child, args.rounds, args.algorithms[0])))
        return
    print(f"W5: generated population, logreg, 100 clients/round, 1 step, serial fleet, "
          f"{args.rounds} rounds, {args.reps} runs each, peak resident memory per process")
    for algorithm in args.algorithms:
        runs: dict[int, list[dict[str, float]]] = {n: [] for n in args.sizes}
        for _ in range(args.reps):
            for n in args.sizes:
                runs[n].append(child(n, args.rounds, algorithm))
        setting = " ".join(ROWS[algorithm][1:]) or "uniform cohorts, constant clock"
        where = ", client state on disk" if algorithm in STATEFUL else ""
        print(f"{algorithm} ({setting}{where}; load {os.getloadavg()[0]:.1f})")
        base = args.sizes[0]
        base_mem = max(r["peak_mib"] for r in runs[base])
        base_s = statistics.median(r["round_s"] for r in runs[base])
        for n in args.sizes:
            mem = max(r["peak_mib"] for r in runs[n])
            sec = statistics.median(r["round_s"] for r in runs[n])
            disk = max(r["state_mib"] for r in runs[n])
            state = f", state on disk {disk:5.1f} MiB" if algorithm in STATEFUL else ""
            print(f"  {n:>9,} registered: peak {mem:7.1f} MiB ({mem / base_mem:.3f}x, "
                  f"target <= 1.10x), {sec * 1e3:6.1f} ms/round ({sec / base_s:.2f}x){state}, "
                  f"final accuracy {runs[n][-1]['accuracy']:.3f}")


if __name__ == "__main__":
    main()
