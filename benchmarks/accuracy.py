"""FedAvg on MNIST 2NN (W1 settings, IID): rounds to 97% test accuracy.

The FedAvg paper (Table 1) reports ~87 rounds for this setting. Run with ``make accuracy``;
the run directory lands under runs/.
"""

from __future__ import annotations

import argparse
import time

from fedloom.app.config import load_config
from fedloom.app.experiment import run_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/fedavg_mnist_2nn_iid.yaml")
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    start = time.perf_counter()
    result = run_experiment(cfg, console=True)
    seconds = time.perf_counter() - start
    rows = [r for r in result.history.rows if r.get("test_accuracy") is not None]
    hits = [r["round"] for r in rows if float(r["test_accuracy"] or 0) >= args.target]
    best = max(float(r["test_accuracy"] or 0) for r in rows)
    reached = f"round {hits[0]}" if hits else "not reached"
    print(f"{cfg.name}: {args.target:.0%} test accuracy at {reached}; best {best:.4f}; "
          f"{len(result.history.rows)} rounds in {seconds:.0f} s; run dir {result.out}")


if __name__ == "__main__":
    main()
