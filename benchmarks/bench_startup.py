"""Start-up: a short W1 run end to end, serial fleet against the process fleet (issue 17, item 3).

Each side is a whole ``fedloom run`` in its own interpreter (``python -m fedloom run ...``), timed
from the moment the process starts to its exit: imports, data loading, the fleet's workers
(started by a preloaded fork server while the data loads), ``rounds`` rounds with central
evaluation every round, and the run directory. "first round" is when round 1's row reaches
``metrics.jsonl`` (polled every 5 ms). Sides alternate in rotating order, the median over
repetitions is reported, and the target is the process fleet's whole run no slower than the
serial fleet's (ratio <= 1.0).

Sides: ``serial`` with all cores (``fleet.threads`` = the core count) and ``process`` with
``fleet.workers=2 fleet.threads=1``. The load average is printed before and after: on a shared
machine other jobs distort both sides (a busy core hurts a 2-thread serial fleet most).

Run: ``python benchmarks/bench_startup.py --reps 3`` (W1: configs/fedavg_mnist_2nn_iid.yaml).
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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fedavg_mnist_2nn_iid.yaml"


@dataclass(frozen=True, slots=True)
class Timing:
    total: float  # process start to exit
    first_round: float  # process start to round 1's row in metrics.jsonl
    steady: float  # median round_seconds of rounds 2.. (fit + evaluation)


def sides(cores: int) -> dict[str, list[str]]:
    return {"serial": ["fleet.kind=serial", f"fleet.threads={cores}"],
            "process": ["fleet.kind=process", "fleet.workers=2", "fleet.threads=1"]}


def first_row_seen(metrics: Path) -> bool:
    try:
        return b"\n" in metrics.read_bytes()
    except FileNotFoundError:
        return False


def run_once(overrides: list[str], out: Path, rounds: int) -> Timing:
    """One ``fedloom run`` in a fresh interpreter, timed from spawn to exit."""
    cmd = [sys.executable, "-m", "fedloom", "run", str(CONFIG), f"rounds={rounds}",
           f"out={out}", *overrides, "--quiet"]
    metrics = out / "metrics.jsonl"
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    while proc.poll() is None:
        if first is None and first_row_seen(metrics):
            first = time.perf_counter() - start
        time.sleep(0.005)
    total = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err}")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    steady = statistics.median(r["round_seconds"] for r in rows[1:]) if len(rows) > 1 else 0.0
    return Timing(total, total if first is None else first, steady)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    named = sides(cores)
    print(f"W1 start-up: {args.rounds} rounds end to end, {cores} cores, "
          f"load {os.getloadavg()[0]:.2f}")
    for name, overrides in named.items():
        print(f"  {name}: fedloom run {CONFIG.relative_to(ROOT)} rounds={args.rounds} "
              f"{' '.join(overrides)}")
    times: dict[str, list[Timing]] = {name: [] for name in named}
    order = list(named)
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        for rep in range(args.reps):
            for name in order[rep % 2:] + order[:rep % 2]:  # rotate which side goes first
                times[name].append(run_once(named[name], Path(tmp) / f"{name}-{rep}",
                                            args.rounds))
    print(f"{'side':<8} {'whole run s':>12} {'first round s':>14} {'steady round s':>15}")
    med = {}
    for name, ts in times.items():
        med[name] = Timing(*(statistics.median(getattr(t, f) for t in ts)
                             for f in ("total", "first_round", "steady")))
        print(f"{name:<8} {med[name].total:>12.2f} {med[name].first_round:>14.2f} "
              f"{med[name].steady:>15.3f}")
    ratio = med["process"].total / med["serial"].total
    print(f"process / serial, whole run: {ratio:.2f} (target <= 1.00: "
          f"{'met' if ratio <= 1.0 else 'NOT met'}); first round "
          f"{med['process'].first_round / med['serial'].first_round:.2f}, steady round "
          f"{med['process'].steady / med['serial'].steady:.2f}")
    print(f"load after: {os.getloadavg()[0]:.2f} (median of {args.reps} per side)")


if __name__ == "__main__":
    main()
