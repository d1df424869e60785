"""The vectorized fleet against a plain 1-thread PyTorch loop and the serial fleet, on W1 and W2.

All sides train the same 10 clients of real MNIST (100 IID clients, E=1, B=10, lr 0.05: 60 SGD
steps per client) from the same global model on the same batches, then evaluate a model on the
10,000 test examples (the round's central evaluation). Each repetition is one round of every
side, in rotating order (interleaved); the first round warms up (the vectorized fleet records,
and with ``--compile on`` compiles, its step there) and is not counted. Reported: median seconds
per round for the fit and for the round with evaluation, client updates per second, ratios to
the plain loop (1 torch thread, as a user would write it) and to the serial fleet, achieved
GFLOP/s against the machine's fp32 matmul peak (a 2048 x 2048 matmul timed here on the same
threads), compile seconds, and the largest parameter difference to the plain loop on the last
round (the CNN's trajectory on MNIST is chaotic: a 1e-7 change of the starting point moves the
serial fleet's model by ~3e-2 after 60 steps, so differences of that size there are rounding
amplified, not a mismatch). FLOPs are counted once per workload with
``torch.utils.flop_counter`` (matmuls and convolutions of one training step and one forward).

Run:
    python benchmarks/bench_vectorized.py                       # W1 and W2, all cores
    python benchmarks/bench_vectorized.py --workloads W1 --compile off on --profile
    python benchmarks/bench_vectorized.py --workloads W1 --parallel 1 2  # parts on threads
    python benchmarks/bench_vectorized.py --workloads W1 --reps 9 --threads 1 --clock cpu
    python benchmarks/bench_vectorized.py --workloads W2 --conv auto loop grouped --chunks 0 2
    python benchmarks/bench_vectorized.py --device cuda         # on a GPU machine
"""

from __future__ import annotations

import fedloom  # noqa: F401  # isort: skip  (before torch: fedloom.core.openmp)

import argparse
import dataclasses
import itertools
import os
import resource
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from overhead import plain_evaluate, plain_round  # benchmarks/overhead.py (this directory)
from torch.utils.flop_counter import FlopCounterMode

from fedloom import ClientConfig, DataConfig, FedAvg, ModelConfig, Simulation, load_federated
from fedloom.core.packages import ClientResult, Downlink, Outcome
from fedloom.core.threads import torch_threads
from fedloom.data.config import DatasetName
from fedloom.data.dataset import ArrayData
from fedloom.fleets.vectorized import VectorizedTrainer
from fedloom.models import ModelName, model_factory
from fedloom.training.evaluation import CentralEvaluator

WORKLOADS = {"W1": "mlp", "W2": "cnn"}
TARGETS = {"fit": 5.5, "round": 5.0}  # W1 vectorized vs the plain 1-thread loop (issue 17)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclasses.dataclass
class Side:
    """One way of running a round: its fit, its evaluation, the threads both run on."""

    fit: Callable[[list[Downlink]], object]
    evaluate: Callable[[torch.Tensor], object]
    threads: int
    trainer: VectorizedTrainer | None = None


def timed(fn: Callable[[], object], device: torch.device,
          clock: Callable[[], float]) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = clock()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - start, out


def matmul_peak(threads: int, device: torch.device, clock: Callable[[], float],
                n: int = 2048) -> float:
    """The machine's fp32 GFLOP/s on an n x n matmul (best of 5) on ``threads`` threads, timed
    on the clock the rounds are timed on."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    with torch_threads(threads):
        for _ in range(6):
            best = min(best, timed(lambda: a @ b, device, clock)[0])
    return 2 * n ** 3 / best / 1e9


def flops_per_example(model: torch.nn.Module, x: torch.Tensor,
                      y: torch.Tensor) -> tuple[float, float]:
    """(training step, forward) FLOPs per example, counted on one batch."""
    with FlopCounterMode(display=False) as train:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        model(x)
    model.zero_grad(set_to_none=True)
    return train.get_total_flops() / len(y), forward.get_total_flops() / len(y)


def bench(workload: str, *, reps: int, device: torch.device, threads: int, convs: list[str],
          chunks: list[int], compile_modes: list[str], parallels: list[int],
          clock: Callable[[], float], profile: bool) -> dict[str, dict[str, float]]:
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
    evaluator = CentralEvaluator(model_fn=model_fn, test=data.test, device=device)
    model = model_fn().to(device)
    initial = {k: v.to(device) for k, v in sim.layout.unflatten(sim.initial_params).items()}

    def plain_eval(params: torch.Tensor) -> object:
        model.load_state_dict(sim.layout.unflatten(params))
        return plain_evaluate(model, data)

    sides = {
        "plain (1 thread)": Side(fit=lambda tasks: plain_round(
            model, data, tasks, initial, 0, on=(train.x, train.y)), evaluate=plain_eval,
            threads=1),
        "serial": Side(fit=lambda tasks: [serial.fit(t) for t in tasks], evaluate=evaluator,
                       threads=threads)}
    for conv in convs if workload == "W2" else ["auto"]:
        for chunk in chunks:
            for mode, parallel in itertools.product(compile_modes, parallels or [threads]):
                trainer = VectorizedTrainer(spec, device, chunk or None, conv=conv,
                                            compile=mode, parallel=parallel)
                name = "vectorized" + (f" conv={conv}" if workload == "W2" else "") + \
                    (f" chunk={chunk}" if chunk else "") + \
                    (f" compile={mode}" if len(compile_modes) > 1 else "") + \
                    (f" parallel={trainer.parallel}" if len(parallels) > 1 else "")
                sides[name] = Side(fit=trainer.fit_many, evaluate=evaluator, threads=threads,
                                   trainer=trainer)
    fits: dict[str, list[float]] = {k: [] for k in sides}
    rounds: dict[str, list[float]] = {k: [] for k in sides}
    outs: dict[str, object] = {}
    names = list(sides)
    for rnd in range(reps + 1):  # round 0 warms every side up and is not counted
        tasks = sim.algorithm.configure(rnd + 1, sim.state, sim.sampler.sample(rnd + 1), client)
        tasks = [Downlink(round=t.round, client_id=t.client_id, params=t.params.to(device),
                          config=t.config) for t in tasks]
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            side = sides[name]
            with torch_threads(side.threads):
                fit_s, outs[name] = timed(partial(side.fit, tasks), device, clock)
                eval_s, _ = timed(partial(side.evaluate, tasks[0].params), device, clock)
            if rnd:
                fits[name].append(fit_s)
                rounds[name].append(fit_s + eval_s)
    if profile:
        _profile(sides[names[-1]], tasks, names[-1])
    x, y = train.batch(torch.arange(10, device=device))
    train_flops, eval_flops = flops_per_example(model_fn().to(device), x, y)
    steps = sum(int(spec.client_indices[t.client_id].shape[0]) for t in tasks)
    plain = outs[names[0]]
    assert isinstance(plain, list)
    return {name: {
        "fit": statistics.median(fits[name]), "round": statistics.median(rounds[name]),
        "fit_flops": train_flops * steps, "round_flops": train_flops * steps
        + eval_flops * len(data.test), "threads": sides[name].threads,
        "compile_s": 0.0 if side.trainer is None or side.trainer.compiler is None
        else side.trainer.compiler.seconds,
        "diff": max(float((_params(r)[:p.shape[0]] - p).abs().max())
                    for r, p in zip(out, plain))}
        for name, side in sides.items() if isinstance(out := outs[name], list)}


def _profile(side: Side, tasks: list[Downlink], name: str) -> None:
    """torch.profiler on one more round (fit and evaluation) of ``side``: the top ops.

    The profiler sees only this thread, so a trainer that runs parts of a chunk on threads is
    profiled training the whole chunk here on one torch thread (the ops each part runs)."""
    from torch.profiler import ProfilerActivity, profile

    parts, threads = 1, side.threads
    if side.trainer is not None and side.trainer.parallel > 1:
        parts, side.trainer.parallel, threads = side.trainer.parallel, 1, 1
    with torch_threads(threads):
        side.fit(tasks)  # records a chunk of a new size outside the profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            side.fit(tasks)
    with torch_threads(side.threads), profile(activities=[ProfilerActivity.CPU]) as evaluation:
        side.evaluate(tasks[0].params)
    if side.trainer is not None:
        side.trainer.parallel = parts
    print(f"profile of one {name} fit ({'as one part, ' if parts > 1 else ''}{threads} "
          f"thread{'s' if threads > 1 else ''}), by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    print(f"profile of its evaluation ({side.threads} threads):")
    print(evaluation.key_averages().table(sort_by="self_cpu_time_total", row_limit=6))


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
    parser.add_argument("--compile", nargs="+", default=["auto"], choices=["auto", "on", "off"],
                        help="fleet.compile values of the vectorized fleet to measure")
    parser.add_argument("--parallel", nargs="+", type=int, default=[],
                        help="parts of a chunk trained at once, one torch thread each (default: "
                             "--threads, as the fleet does on CPU; 1: one part on --threads)")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's top ops of one more round of the last side")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="cpu: this process's CPU time, steadier than wall time on a busy "
                             "shared machine (meaningful with --threads 1 only)")
    args = parser.parse_args()
    device = torch.device(args.device)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu, {args.threads} threads"
    peaks = {n: matmul_peak(n, device, CLOCKS[args.clock]) for n in sorted({1, args.threads})}
    print(f"torch {torch.__version__}, {label}, {args.clock} clock, load "
          f"{os.getloadavg()[0]:.1f}; median of {args.reps} interleaved rounds (10 clients, "
          f"E=1, B=10, 60 steps each; round = fit + evaluation of 10,000 examples)")
    print("fp32 2048x2048 matmul peak: " + ", ".join(
        f"{g:.0f} GFLOP/s on {n} thread{'s' if n > 1 else ''}" for n, g in peaks.items()))
    print(f"{'workload':<9}{'side':<34}{'fit s':>7}{'x plain':>8}{'x serial':>9}{'round s':>8}"
          f"{'x plain':>8}{'fit GF/s':>9}{'% peak':>7}{'rnd GF/s':>9}{'% peak':>7}"
          f"{'compile s':>10}{'max|d|':>9}")
    for w in args.workloads:
        res = bench(w, reps=args.reps, device=device, threads=args.threads, convs=args.conv,
                    chunks=args.chunks, compile_modes=args.compile, parallels=args.parallel,
                    clock=CLOCKS[args.clock], profile=args.profile)
        plain, serial = res["plain (1 thread)"], res["serial"]
        for name, r in res.items():
            peak = peaks[int(r["threads"])]
            fit_gf, round_gf = r["fit_flops"] / r["fit"] / 1e9, r["round_flops"] / r["round"] / 1e9
            print(f"{w:<9}{name:<34}{r['fit']:>7.3f}{plain['fit'] / r['fit']:>7.2f}x"
                  f"{serial['fit'] / r['fit']:>8.2f}x{r['round']:>8.3f}"
                  f"{plain['round'] / r['round']:>7.2f}x{fit_gf:>9.1f}{100 * fit_gf / peak:>6.0f}%"
                  f"{round_gf:>9.1f}{100 * round_gf / peak:>6.0f}%{r['compile_s']:>10.1f}"
                  f"{r['diff']:>9.1e}")
        if w == "W1":
            best = {k: max(plain[k] / r[k] for n, r in res.items() if n.startswith("vectorized"))
                    for k in TARGETS}
            for k, target in TARGETS.items():
                print(f"target: W1 vectorized {k} >= {target}x the plain 1-thread loop: "
                      f"{best[k]:.2f}x ({'met' if best[k] >= target else 'missed'})")
    peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory {peak_mem:.0f} MiB")


if __name__ == "__main__":
    main()
