"""q-FFL's Adult result (Li, Sanjabi, Beirami, Smith, ICLR 2020) on fedloom: two clients, PhD
(education = Doctorate: 413 training rows) and everyone else (32,148), logistic regression.

Sample-weighted FedAvg all but ignores the PhD client; q-FFL weights each client's update by its
loss to the power q, so q > 0 should raise the worse client's test accuracy. For each algorithm
this runs ``configs/qffl_adult.yaml`` over several seeds and prints a Markdown table of the
final global model's test accuracy on each client's local test split (PhD: 181 rows, non-PhD:
16,100), the worse of the two, and the accuracy on all 16,281 test rows, as mean +- std over
seeds. ``python benchmarks/qffl_adult.py [key=value ...] [--seeds K] [--q 0 1 2 5]`` (config
overrides first, e.g. ``data.features=all`` for every column, ``rounds=1000``); about 7 seconds
per run on one core.
"""

from __future__ import annotations

import fedloom  # noqa: F401  # isort: skip  (before torch: fedloom.core.openmp)

import argparse
import dataclasses
import statistics
from collections.abc import Sequence

import torch

from fedloom.algorithms.fedavg import FedAvgOptions
from fedloom.algorithms.qffl import QFFLOptions
from fedloom.algorithms.registry import AlgorithmConfig
from fedloom.app.build import build_run
from fedloom.app.config import RunConfig, load_config
from fedloom.core.threads import torch_threads
from fedloom.data.dataset import FederatedData
from fedloom.data.load import load_federated
from fedloom.models import model_factory
from fedloom.training.evaluation import InferenceModel

CONFIG = "configs/qffl_adult.yaml"
CLIENTS = ("PhD", "non-PhD")  # data.groups=[[Doctorate]]: the group first, then the rest


def client_accuracies(cfg: RunConfig, data: FederatedData, params: torch.Tensor) -> list[float]:
    """The model's accuracy on each client's local test split, then on the whole test set."""
    model = InferenceModel(model_factory(cfg.model, data.input_shape, data.num_classes))
    model.load(params)
    assert data.client_test is not None
    accuracies = []
    with torch.inference_mode():
        for idx in (*data.client_test, torch.arange(len(data.test))):
            x, y = data.test.batch(idx)
            accuracies.append(float((model(x).argmax(1) == y).double().mean()))
    return accuracies


def run_once(cfg: RunConfig, data: FederatedData) -> list[float]:
    history = build_run(cfg).run()
    return client_accuracies(cfg, data, history.final.params)


def algorithms(qs: Sequence[float]) -> list[tuple[str, AlgorithmConfig]]:
    return [("FedAvg (sample-weighted)", AlgorithmConfig(name="fedavg", options=FedAvgOptions())),
            *((f"q-FFL q={q:g}", AlgorithmConfig(name="qffl", options=QFFLOptions(q=q)))
              for q in qs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--q", type=float, nargs="+", default=[0.0, 1.0, 2.0, 5.0])
    parser.add_argument("overrides", nargs="*", help=f"key=value overrides of {CONFIG}")
    args = parser.parse_args()
    base = load_config(CONFIG, ["fleet.threads=1", *args.overrides])
    data = load_federated(base.data, seed=base.seed)
    lines = [f"| algorithm | {CLIENTS[0]} | {CLIENTS[1]} | worst | all test rows |",
             "|---|---|---|---|---|"]
    print(f"{CONFIG} {' '.join(args.overrides)}: {base.rounds} rounds, "
          f"{data.input_shape[0]} features, seeds 0-{args.seeds - 1}, mean +- std over seeds",
          flush=True)
    with torch_threads(1):
        for label, algorithm in algorithms(args.q):
            runs = [run_once(dataclasses.replace(base, algorithm=algorithm, seed=seed), data)
                    for seed in range(args.seeds)]
            columns = [[r[0] for r in runs], [r[1] for r in runs],
                       [min(r[:2]) for r in runs], [r[2] for r in runs]]
            lines.append(f"| {label} | " + " | ".join(_cell(c) for c in columns) + " |")
            print(lines[-1], flush=True)
    print("\n".join(lines))


def _cell(values: Sequence[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} +- {100 * spread:.1f}"


if __name__ == "__main__":
    main()
