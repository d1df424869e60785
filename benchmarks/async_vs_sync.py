"""FedBuff against synchronous FedAvg in simulated time, with heavy-tailed client speeds.

MNIST 2NN, 100 IID clients, E=1, B=10, lr 0.1; per-step times 1 + Pareto(1.5) (a few clients
are many times slower). FedAvg waits for its slowest of 10 clients every round; FedBuff keeps
``concurrency`` clients busy and steps after every ``buffer_size`` results. Prints the simulated
time each needs to reach FedAvg's final accuracy. ``python benchmarks/async_vs_sync.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedloom.app.config import load_config
from fedloom.app.experiment import run_experiment

COMMON = ["clock.speed=pareto", "clock.shape=1.5", "fleet.threads=1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("runs/async_vs_sync"))
    args = parser.parse_args()
    sync = run_experiment(load_config("configs/fedavg_mnist_2nn_iid.yaml", [
        *COMMON, f"rounds={args.rounds}", f"out={args.out / 'fedavg'}"]), console=False)
    target = float(sync.history.rows[-1]["test_accuracy"] or 0)
    runs = {"fedavg (sync, 10 per round)": sync.history.rows}
    for buffer, concurrency in ((10, 20), (10, 30)):
        result = run_experiment(load_config("configs/fedavg_mnist_2nn_iid.yaml", [
            *COMMON, "algorithm.name=fedbuff", f"algorithm.buffer_size={buffer}",
            f"clock.concurrency={concurrency}", f"rounds={3 * args.rounds}",
            f"out={args.out / f'fedbuff_{buffer}_{concurrency}'}"]), console=False)
        runs[f"fedbuff (buffer {buffer}, concurrency {concurrency})"] = result.history.rows
    print(f"target: FedAvg's accuracy after {args.rounds} rounds = {target:.4f}")
    print("| run | simulated time to target | updates to target | best accuracy |")
    print("|---|---|---|---|")
    for name, rows in runs.items():
        hit = next((r for r in rows if float(r.get("test_accuracy") or 0) >= target), None)
        best = max(float(r.get("test_accuracy") or 0) for r in rows)
        when = f"{hit['sim_time']:.0f}" if hit else "not reached"
        print(f"| {name} | {when} | {hit['round'] if hit else '-'} | {best:.4f} |")


if __name__ == "__main__":
    main()
