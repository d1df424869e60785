"""Serial-fleet overhead against a plain PyTorch loop on W1 and W2 (BENCHMARKS.md).

Both sides train the same clients from the same global model on the same batches with the same
number of SGD steps; rounds alternate between the two (interleaved) and the median is reported.
Run with ``make bench`` (or ``python benchmarks/overhead.py --workloads W1 --reps 7``).
"""

from __future__ import annotations

import fedloom  # noqa: F401  # isort: skip  (before torch: fedloom.core.openmp)

import argparse
import os
import resource
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from fedloom import ClientConfig, DataConfig, FedAvg, ModelConfig, Simulation, load_federated
from fedloom.core.packages import Downlink
from fedloom.core.rng import Purpose, torch_generator
from fedloom.data.dataset import FederatedData
from fedloom.models import model_factory

WORKLOADS = {"W1": "mlp", "W2": "cnn"}


def plain_round(model: nn.Module, data: FederatedData, tasks: list[Downlink],
                initial: dict[str, torch.Tensor], seed: int, *,
                on: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """What a user would write without a framework: load, shuffle, SGD, collect. ``on``: the
    training images and labels already on the model's device (default: ``data``'s, on cpu)."""
    train = data.arrays()
    x_all, y_all = on if on is not None else (train.x, train.y)
    mean, std = train.mean, train.std
    out = []
    for task in tasks:
        cfg = task.config
        model.load_state_dict(initial)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        gen = torch_generator(seed, task.round, task.client_id, Purpose.BATCHES)
        idx = data.client_train[task.client_id]
        for _ in range(cfg.epochs):
            order = idx[torch.randperm(len(idx), generator=gen)].to(x_all.device)
            for start in range(0, len(idx), cfg.batch_size):
                b = order[start:start + cfg.batch_size]
                x = ((x_all[b].float() / 255.0) - mean) / std
                loss = F.cross_entropy(model(x), y_all[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        out.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    return out


def plain_evaluate(model: nn.Module, data: FederatedData, batch_size: int = 1000) -> float:
    """Test accuracy the plain way: normalise a batch, forward, count."""
    x_all, y_all = data.test.x, data.test.y
    mean, std = data.train.mean, data.train.std
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(y_all), batch_size):
            x = ((x_all[start:start + batch_size].float() / 255.0) - mean) / std
            correct += int((model(x).argmax(1) == y_all[start:start + batch_size]).sum())
    model.train()
    return correct / len(y_all)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(workload: str, reps: int, threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    data = load_federated(DataConfig(name="mnist", num_clients=100), seed=0)
    model_fn = model_factory(ModelConfig(name=WORKLOADS[workload]), data.input_shape,
                             data.num_classes)
    client = ClientConfig(epochs=1, batch_size=10, lr=0.05)
    sim = Simulation(data=data, model_fn=model_fn, algorithm=FedAvg(), client=client,
                     rounds=reps + 1, cohort_size=10, seed=0, threads=threads)
    plain_model = model_fn()
    initial = sim.layout.unflatten(sim.initial_params)
    plain_t, fleet_t = [], []
    for rnd in range(reps + 1):  # round 0 warms both up and is not counted
        tasks = sim.algorithm.configure(rnd, sim.state, sim.sampler.sample(rnd), client)
        order = [0, 1] if rnd % 2 else [1, 0]
        times = {}
        for which in order:
            if which == 0:
                times[0] = timed(partial(plain_round, plain_model, data, tasks, initial, 0))
            else:
                times[1] = timed(partial(sim.fleet.fit, rnd, tasks))
        if rnd:
            plain_t.append(times[0])
            fleet_t.append(times[1])
    plain, fleet = statistics.median(plain_t), statistics.median(fleet_t)
    return {"plain": plain, "serial": fleet, "ratio": fleet / plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workloads", nargs="+", default=["W1", "W2"], choices=list(WORKLOADS))
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.reps} "
          f"interleaved rounds (10 clients, E=1, B=10, 60 steps each)")
    print(f"{'workload':<9}{'plain s/round':>15}{'serial s/round':>16}{'updates/s':>11}"
          f"{'serial/plain':>14}")
    for w in args.workloads:
        r = bench(w, args.reps, args.threads)
        print(f"{w:<9}{r['plain']:>15.3f}{r['serial']:>16.3f}{10 / r['serial']:>11.1f}"
              f"{r['ratio']:>13.3f}x")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory {peak:.0f} MiB; target: serial/plain <= 1.05x")


if __name__ == "__main__":
    main()
