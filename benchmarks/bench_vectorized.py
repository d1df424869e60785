"""The vectorized fleet against a plain PyTorch loop and the serial fleet, on W1 and W2.

All sides train the same 10 clients of real MNIST (100 IID clients, E=1, B=10, lr 0.05: 60 SGD
steps per client) from the same global model on the same batches. Each repetition is one round
of every side, in rotating order (interleaved); the first round warms up (and lets the
vectorized fleet record its step) and is not counted. Reported: median seconds per round (fit
only), client updates per second, the ratio to the plain loop and to the serial fleet, and the
largest parameter difference to the plain loop on the last round (the CNN's trajectory on MNIST
is chaotic: a 1e-7 change of the starting point moves the serial fleet's model by ~3e-2 after 60
steps, so differences of that size there are rounding amplified, not a mismatch).

Run:
    python benchmarks/bench_vectorized.py                       # W1 and W2, all cores
    python benchmarks/bench_vectorized.py --workloads W1 --reps 9 --threads 1 --clock cpu
    python benchmarks/bench_vectorized.py --workloads W2 --conv auto loop grouped --chunks 0 2
    python benchmarks/bench_vectorized.py --device cuda         # on a GPU machine
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from overhead import plain_round  # benchmarks/overhead.py (this script's directory)

from fedloom import ClientConfig, DataConfig, FedAvg, ModelConfig, Simulation, load_federated
from fedloom.core.packages import ClientResult, Downlink, Outcome
from fedloom.data.config import DatasetName
from fedloom.data.dataset import ArrayData
from fedloom.fleets.vectorized import VectorizedTrainer
from fedloom.models import ModelName, model_factory

WORKLOADS = {"W1": "mlp", "W2": "cnn"}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn: Callable[[], object], device: torch.device,
          clock: Callable[[], float]) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = clock()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - start, out


def bench(workload: str, *, reps: int, device: torch.device, convs: list[str],
          chunks: list[int],
          clock: Callable[[], float]) -> tuple[dict[str, float], dict[str, float]]:
    data = load_federated(DataConfig(name=DatasetName.MNIST, num_clients=100), seed=0)
    model_fn = model_factory(ModelConfig(name=ModelName(WORKLOADS[workload])), data.input_shape,
                             data.num_classes)
    client = ClientConfig(epochs=1, batch_size=10, lr=0.05)
    sim = Simulation(data=data, model_fn=model_fn, algorithm=FedAvg(), client=client,
                     rounds=reps + 1, cohort_size=10, seed=0)
    if device.type != "cpu":  # every side reads the data from the device
        train = ArrayData(x=data.train.x.to(device), y=data.train.y.to(device),
                          mean=data.train.mean, std=data.train.std)
        spec = dataclasses.replace(sim.spec, train=train)
    else:
        spec, train = sim.spec, data.train
    serial = spec.trainer(device)
    sides: dict[str, Callable[[list[Downlink]], object]] = {}
    model = model_fn().to(device)
    initial = {k: v.to(device) for k, v in sim.layout.unflatten(sim.initial_params).items()}
    sides["plain"] = lambda tasks: plain_round(model, data, tasks, initial, 0,
                                                 on=(train.x, train.y))
    sides["serial"] = lambda tasks: [serial.fit(t) for t in tasks]
    for conv in convs if workload == "W2" else ["auto"]:
        for chunk in chunks:
            trainer = VectorizedTrainer(spec, device, chunk or None, conv=conv)
            name = "vectorized" + (f" conv={conv}" if workload == "W2" else "") + \
                (f" chunk={chunk}" if chunk else "")
            sides[name] = trainer.fit_many
    times: dict[str, list[float]] = {k: [] for k in sides}
    outs: dict[str, object] = {}
    names = list(sides)
    for rnd in range(reps + 1):  # round 0 warms every side up and is not counted
        tasks = sim.algorithm.configure(rnd + 1, sim.state, sim.sampler.sample(rnd + 1), client)
        tasks = [Downlink(round=t.round, client_id=t.client_id, params=t.params.to(device),
                          config=t.config) for t in tasks]
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            seconds, outs[name] = timed(partial(sides[name], tasks), device, clock)
            if rnd:
                times[name].append(seconds)
    plain = outs["plain"]
    assert isinstance(plain, list)
    diffs = {name: max(float((_params(r)[:p.shape[0]] - p).abs().max())
                       for r, p in zip(out, plain))
             for name, out in outs.items() if isinstance(out, list)}
    return {k: statistics.median(v) for k, v in times.items()}, diffs


def _params(out: Outcome | torch.Tensor) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    assert isinstance(out, ClientResult), out
    return out.params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=["W1", "W2"], choices=list(WORKLOADS))
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--conv", nargs="+", default=["auto"], choices=["auto", "loop", "grouped"],
                        help="W2: convolution formulations of the vectorized fleet to measure")
    parser.add_argument("--chunks", nargs="+", type=int, default=[0],
                        help="fleet.chunk values to measure (0: all clients at once)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="cpu: this process's CPU time, steadier than wall time on a busy "
                             "shared machine (meaningful with --threads 1 only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu, {args.threads} threads"
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {label}, {args.clock} clock, load {load:.1f}; median of "
          f"{args.reps} interleaved rounds (10 clients, E=1, B=10, 60 steps each)")
    print(f"{'workload':<9}{'side':<34}{'s/round':>9}{'updates/s':>11}{'x plain':>9}"
          f"{'x serial':>10}{'max|d| vs plain':>17}")
    for w in args.workloads:
        med, diffs = bench(w, reps=args.reps, device=device, convs=args.conv,
                           chunks=args.chunks, clock=CLOCKS[args.clock])
        for name, seconds in med.items():
            print(f"{w:<9}{name:<34}{seconds:>9.3f}{10 / seconds:>11.1f}"
                  f"{med['plain'] / seconds:>8.2f}x{med['serial'] / seconds:>9.2f}x"
                  f"{diffs[name]:>17.1e}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory {peak:.0f} MiB; target (CPU): vectorized >= 4x plain on W1")


if __name__ == "__main__":
    main()
