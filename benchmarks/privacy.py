"""Differential privacy on MNIST: accuracy against epsilon (central DP-FedAvg, 2NN) and the cost
of sample-level DP-SGD against non-private local training (W1), serial and vectorized.

``--part accuracy`` runs FedAvg on the 2NN with ``privacy.mechanism=central`` for a few noise
multipliers (and without privacy), on a 100-client population (10 per round) and a 1,000-client
one (100 per round, so the noise on the mean is 10x smaller), and prints the final test accuracy
with the epsilon spent (RDP, delta 1e-5). ``--part cost`` times one W1 round (10 clients of 600
examples, E=1, B=10: 60 steps each) with and without DP-SGD, interleaved, median of ``--reps``
(the first round warms up and lets the vectorized fleet record its step). The vectorized sides
train in ``--threads`` parts on threads, as the fleet does.

Run:
    python benchmarks/privacy.py --part cost --reps 5
    python benchmarks/privacy.py --part accuracy --rounds 30
"""

from __future__ import annotations

import fedloom  # noqa: F401  # isort: skip  (before torch: fedloom.core.openmp)

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from fedloom import ClientConfig, DataConfig, FedAvg, ModelConfig, Simulation, load_federated
from fedloom.app.build import build_run
from fedloom.app.config import load_config
from fedloom.core.errors import ClientError
from fedloom.core.threads import torch_threads
from fedloom.data.config import DatasetName
from fedloom.fleets.vectorized import VectorizedTrainer
from fedloom.models import ModelName, model_factory
from fedloom.privacy.local import sample_dp


def cost(reps: int, threads: int, clip: float, z: float) -> None:
    data = load_federated(DataConfig(name=DatasetName.MNIST, num_clients=100), seed=0)
    model_fn = model_factory(ModelConfig(name=ModelName.MLP), data.input_shape,
                             data.num_classes)
    client = ClientConfig(epochs=1, batch_size=10, lr=0.05)
    sim = Simulation(data=data, model_fn=model_fn, algorithm=FedAvg(), client=client,
                     rounds=reps + 1, cohort_size=10, seed=0)
    plain_spec = sim.spec
    dp_spec = dataclasses.replace(plain_spec, local=sample_dp(
        plain_spec.local, clip=clip, noise_multiplier=z, seed=0))
    tasks = sim.algorithm.configure(1, sim.algorithm.init(sim.initial_params),
                                    list(range(10)), client)
    serial_plain, serial_dp = plain_spec.trainer(), dp_spec.trainer()
    # as the vectorized fleet builds them: one part per thread, each drawing its clients' noise
    vec_plain, vec_dp = (VectorizedTrainer(plain_spec, parallel=threads),
                         VectorizedTrainer(dp_spec, parallel=threads))
    sides: dict[str, Callable[[], object]] = {
        "serial": lambda: [serial_plain.fit(t) for t in tasks],
        "serial DP-SGD": lambda: [serial_dp.fit(t) for t in tasks],
        "vectorized": lambda: vec_plain.fit_many(tasks),
        "vectorized DP-SGD": lambda: vec_dp.fit_many(tasks),
    }
    times: dict[str, list[float]] = {k: [] for k in sides}
    with torch_threads(threads):
        for rep in range(reps + 1):
            names = list(sides)
            names = names[rep % len(names):] + names[:rep % len(names)]
            for name in names:
                start = time.perf_counter()
                sides[name]()
                if rep:
                    times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nW1 round (10 clients x 60 steps), {threads} torch thread(s), median of {reps}; "
          f"DP-SGD clip {clip}, noise multiplier {z}\n")
    print("| fleet | non-private s/round | DP-SGD s/round | DP-SGD / non-private |")
    print("|---|---|---|---|")
    for fleet in ("serial", "vectorized"):
        a, b = med[fleet], med[f"{fleet} DP-SGD"]
        print(f"| {fleet} | {a:.3f} | {b:.3f} | {b / a:.2f}x |")


def accuracy(rounds: int, noises: list[float], clip: float, threads: int) -> None:
    print(f"\nMNIST 2NN, FedAvg, central DP-FedAvg (clip {clip}), {rounds} rounds, "
          f"delta 1e-5, vectorized fleet\n")
    print("| population | per round | noise multiplier | epsilon | final test accuracy |")
    print("|---|---|---|---|---|")
    for clients, cohort in ((100, 10), (1000, 100)):
        for z in [None, *noises]:
            overrides = [f"rounds={rounds}", "data.name=mnist", f"data.num_clients={clients}",
                         "model.name=mlp", f"cohort.size={cohort}", "client.epochs=1",
                         "client.batch_size=10", "client.lr=0.1", "fleet.kind=vectorized",
                         f"fleet.threads={threads}", f"eval.every={rounds}"]
            if z is not None:
                overrides += ["privacy.mechanism=central", f"privacy.noise_multiplier={z}",
                              f"privacy.clip={clip}", "privacy.delta=1e-5"]
            run = build_run(load_config(None, overrides))
            try:
                rows = run.run().rows
            except ClientError as err:  # the noise blew the model up: clients send NaN
                print(f"| {clients} | {cohort} | {z} | - | diverged at round {err.round} |",
                      flush=True)
                continue
            eps = rows[-1].get("epsilon")
            eps_text = "-" if eps is None else ("inf" if eps == float("inf") else f"{eps:.2f}")
            print(f"| {clients} | {cohort} | {'none' if z is None else z} | {eps_text} | "
                  f"{rows[-1]['test_accuracy']:.4f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["cost", "accuracy"], required=True)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3, 1.0])
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.part == "cost":
        cost(args.reps, args.threads, args.clip, 1.0)
    else:
        accuracy(args.rounds, args.noise, args.clip, args.threads)


if __name__ == "__main__":
    main()
