"""W1 (BENCHMARKS.md) on the distributed fleet: 2 gloo ranks, 1 torch thread each, vs serial.

One invocation launches ``torchrun`` on 127.0.0.1 itself. Every rank builds the same W1 run
(real MNIST, 100 IID clients, the 2NN, 10 clients x 60 steps, E=1, B=10). Rank 0 then times,
interleaved on the same tasks each round (round 0 warms up and is not counted), the fit of

* a plain PyTorch loop (benchmarks/overhead.py, 1 thread): the reference of every ratio;
* the serial fleet with 1 thread and with all cores;
* the distributed fleet (each rank trains 5 clients), with its parts: rank 0's broadcast of the
  round (control + model), each rank's own training, and collecting the updates at rank 0.
  *Overhead* is the fit's wall time minus the slower rank's training.

Before the rounds both ranks also time the bare collectives at rest: one broadcast of the
flat model and one gather of 5 flat updates per rank. Medians are printed; evaluation is not
timed (fit only). Run::

    .venv/bin/python benchmarks/bench_distributed.py [--reps 7] [--nproc 2]
"""

from __future__ import annotations

import fedloom  # noqa: F401  # isort: skip  (before torch: fedloom.core.openmp)

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from fedloom import ClientConfig, DataConfig, FedAvg, ModelConfig, Simulation, load_federated
from fedloom.fleets import FleetConfig, FleetKind, SerialFleet
from fedloom.fleets.distributed import DistributedFleet
from fedloom.models import model_factory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import plain_round  # a sibling script, not a package

CLIENTS = 10


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def instrument(times: dict[str, list[float]]) -> None:
    """Record the time of each broadcast, own training and collection of the fleet."""
    for name in ("_broadcast", "_train", "_answer"):
        original = getattr(DistributedFleet, name)

        def wrapped(self: DistributedFleet, *args: Any, _f: Any = original,
                    _n: str = name) -> Any:
            start = time.perf_counter()
            out = _f(self, *args)
            times.setdefault(_n, []).append(time.perf_counter() - start)
            return out
        setattr(DistributedFleet, name, wrapped)


def bare_collectives(size: int, per_rank: int, reps: int) -> dict[str, float]:
    """Median seconds of a broadcast of ``size`` floats and a gather of ``per_rank`` x size."""
    rank, world = dist.get_rank(), dist.get_world_size()
    flat = torch.zeros(size)
    rows = torch.zeros(per_rank * size)
    bucket = [torch.empty_like(rows) for _ in range(world)] if rank == 0 else None
    b, g = [], []
    for _ in range(reps + 1):
        dist.barrier()
        b.append(timed(lambda: dist.broadcast(flat, src=0)))
        dist.barrier()
        g.append(timed(lambda: dist.gather(rows, bucket, dst=0)))
    return {"broadcast": statistics.median(b[1:]), "gather": statistics.median(g[1:])}


def rank_main(reps: int, out: Path) -> None:
    torch.set_num_threads(1)
    data = load_federated(DataConfig(name="mnist", num_clients=100), seed=0)
    model_fn = model_factory(ModelConfig(name="mlp"), data.input_shape, data.num_classes)
    client = ClientConfig(epochs=1, batch_size=10, lr=0.05)
    times: dict[str, list[float]] = {}
    instrument(times)
    sim = Simulation(data=data, model_fn=model_fn, algorithm=FedAvg(), client=client,
                     rounds=reps + 1, cohort_size=CLIENTS, seed=0, threads=1,
                     fleet=FleetConfig(kind=FleetKind.DISTRIBUTED, threads=1))
    world = dist.get_world_size()
    bare = bare_collectives(sim.layout.size, -(-CLIENTS // world), reps)
    rank = dist.get_rank()
    report: dict[str, Any] = {"rank": rank, "bare": bare, "params": sim.layout.size}
    if rank != 0:
        sim.run()  # serve until rank 0 closes the fleet
    else:
        report["rounds"] = server_rounds(sim, data, reps)
        sim.fleet.close()
    report["train"] = times.get("_train", [])
    report["broadcast"] = times.get("_broadcast", [])
    report["collect"] = times.get("_answer", [])
    report["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (out / f"rank{rank}.json").write_text(json.dumps(report))


def server_rounds(sim: Simulation, data: Any, reps: int) -> list[dict[str, float]]:
    serial = SerialFleet(sim.spec)
    plain_model = sim.model_fn()
    initial = sim.layout.unflatten(sim.initial_params)
    cores = os.cpu_count() or 1
    rounds = []
    for rnd in range(reps + 1):
        tasks = sim.algorithm.configure(rnd, sim.state, sim.sampler.sample(rnd), sim.client)

        def serial_fit(threads: int, rnd: int = rnd, tasks: list[Any] = tasks) -> object:
            torch.set_num_threads(threads)
            try:
                return serial.fit(rnd, tasks)
            finally:
                torch.set_num_threads(1)
        runs: dict[str, Callable[[], object]] = {
            "plain": lambda tasks=tasks: plain_round(plain_model, data, tasks, initial, 0),
            "serial": lambda: serial_fit(1),
            f"serial_{cores}t": lambda: serial_fit(cores),
            "distributed": lambda rnd=rnd, tasks=tasks: sim.fleet.fit(rnd, tasks),
        }
        order = list(runs) if rnd % 2 else list(reversed(runs))
        rounds.append({name: timed(runs[name]) for name in order})
    return rounds


def launch(reps: int, nproc: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={port}",
               "--monitor-interval=0.1", __file__, "--rank-program", tmp, "--reps", str(reps)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "FEDLOOM_DIST_TIMEOUT": "300"}
        proc = subprocess.run(cmd, env=env, stderr=subprocess.PIPE, text=True)
        if proc.returncode:
            sys.exit(f"torchrun failed ({proc.returncode}):\n{proc.stderr}")
        reports = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(nproc)]
    summarize(reports, reps, nproc)


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarize(reports: list[dict[str, Any]], reps: int, nproc: int) -> None:
    server = reports[0]
    rounds = server["rounds"][1:]  # round 0 warms up
    fit_names = sorted(server["rounds"][0], key=lambda n: (n != "plain", n == "distributed", n))
    walls = {n: med([r[n] for r in rounds]) for n in fit_names}
    plain = walls["plain"]
    print(f"W1 (MNIST 2NN, {CLIENTS} clients x 60 steps, B=10), torch {torch.__version__}, "
          f"{os.cpu_count()} cores; {nproc} gloo ranks x 1 thread on 127.0.0.1; median of "
          f"{reps} interleaved rounds (fit only)")
    print(f"{'fit':<14}{'s/round':>9}{'updates/s':>11}{'/ plain':>9}{'serial(1t) /':>14}")
    for name in fit_names:
        print(f"{name:<14}{walls[name]:>9.3f}{CLIENTS / walls[name]:>11.1f}"
              f"{walls[name] / plain:>8.2f}x{walls['serial'] / walls[name]:>13.2f}x")
    # the distributed fleet's parts: calls 1.. are the timed rounds (0 warms up)
    train = [r["train"][1:reps + 1] for r in reports]
    slowest = [max(ts) for ts in zip(*train)]
    dist_walls = [r["distributed"] for r in rounds]
    overhead = [w - s for w, s in zip(dist_walls, slowest)]
    print(f"distributed parts (median s/round): broadcast at rank 0 "
          f"{med(server['broadcast'][1:]):.4f}, own training "
          + ", ".join(f"rank {i} {med(t):.3f}" for i, t in enumerate(train))
          + f", collect at rank 0 (gather incl. waiting) {med(server['collect'][1:]):.4f}")
    print(f"overhead = fit wall - slower rank's training: {med(overhead):.4f} s/round "
          f"({med(overhead) / med(dist_walls):.1%} of the distributed round)")
    bare = server["bare"]
    mb = server["params"] * 4 / 2**20
    print(f"bare collectives at rest: broadcast of the model ({mb:.2f} MiB) "
          f"{bare['broadcast'] * 1e3:.2f} ms; gather of {-(-CLIENTS // nproc)} updates per rank "
          f"{bare['gather'] * 1e3:.2f} ms")
    print("peak resident memory per rank: "
          + ", ".join(f"rank {r['rank']} {r['peak_mib']:.0f} MiB" for r in reports))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rank-program", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_program:
        rank_main(args.reps, Path(args.rank_program))
    else:
        launch(args.reps, args.nproc)


if __name__ == "__main__":
    main()
