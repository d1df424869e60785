"""Many clients per round: client updates per second as the cohort grows (issue 17, item 4).

Workload: W1's model and local work (2NN, E=1, B=10, lr 0.1, FedAvg) on real MNIST split IID
into 1,000 clients of 60 examples, so that a cohort of 1,000 exists and every client update
costs the same at every cohort size (6 SGD steps of 10 examples). Cohorts of 10, 100 and 1,000
clients per round, on the vectorized fleet (``fleet.chunk`` clients stacked at a time, by default
as many as keep each of its parts to ``PART_BYTES`` of parameters; all cores), the same with
``fleet.aggregation=reduce`` ("vec-reduce": each chunk's updates summed as it finishes, so one
chunk's are held rather than the cohort's), and on the process fleet (2 workers, 1 thread each;
"proc-reduce": each job's updates summed in its worker, one row per job sent back).

A round is what the round loop does (``run_round``): sample, configure, fit, check every update,
aggregate; its seconds give client updates per second. Central evaluation (10,000 test images,
spread over the process fleet's workers) does not depend on the cohort; it is timed apart, and
"with eval" is the throughput of rounds that also evaluate, as W1 does every round. Each fleet
runs every cohort size once untimed, then ``--reps`` samples of each in rotating order, a sample
being ``--updates`` client updates (100 rounds of 10, 10 of 100, 1 of 1,000); medians.
"CPU ms/update" (this process's CPU seconds in the round plus the workers' inside their handlers,
per update) is the cost per update that other load on a shared machine distorts least. Memory:
each fleet and cohort size once more in a fresh interpreter (2 rounds): the resident MiB of
this process, and of the workers together (shared pages, the data and the K x P slab, counted
in each), before the rounds and at their peak (VmRSS, VmHWM). Target: 1,000 per round
>= 2x the updates per second of 10 per round. Run: ``python benchmarks/bench_scaling.py --reps 3``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from fedloom import ClientConfig, DataConfig, FedAvg, ModelConfig, Simulation, load_federated
from fedloom.core.packages import ServerState
from fedloom.core.threads import torch_threads
from fedloom.data.dataset import FederatedData
from fedloom.fleets import FleetConfig, FleetKind
from fedloom.fleets.config import AggregationMode
from fedloom.fleets.process import ProcessFleet
from fedloom.models import ModelFn, model_factory

CLIENT = ClientConfig(epochs=1, batch_size=10, lr=0.1)


@dataclass(slots=True)
class Side:
    """One cohort size on one fleet: its simulation, state and what was measured."""

    sim: Simulation
    state: ServerState
    rnd: int = 0
    round_s: list[float] = field(default_factory=list)
    fit_s: list[float] = field(default_factory=list)
    aggregate_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)

    def step(self) -> dict[str, float]:
        """One round: its seconds, and the CPU seconds of this process and the workers."""
        self.rnd += 1
        cpu = time.process_time()
        self.state, row = self.sim.run_round(self.rnd, self.state)
        cpu = time.process_time() - cpu
        fleet = self.sim.fleet
        if isinstance(fleet, ProcessFleet) and fleet.last_fit is not None:
            cpu += sum(fleet.last_fit.cpu)  # inside the workers' handlers
        return {**{k: float(v) for k, v in row.items() if k.endswith("_seconds")}, "cpu": cpu}

    def sample(self, rounds: int) -> None:
        """``rounds`` rounds; their mean seconds per round filed as one sample."""
        done = [self.step() for _ in range(rounds)]
        for key, out in (("round_seconds", self.round_s), ("fit_seconds", self.fit_s),
                         ("aggregate_seconds", self.aggregate_s), ("cpu", self.cpu_s)):
            out.append(sum(d[key] for d in done) / rounds)


def fleet_configs(chunk: int | None, cores: int) -> dict[str, FleetConfig]:
    return {"vectorized": FleetConfig(kind=FleetKind.VECTORIZED, chunk=chunk, threads=cores),
            "vec-reduce": FleetConfig(kind=FleetKind.VECTORIZED, chunk=chunk, threads=cores,
                                      aggregation=AggregationMode.REDUCE),
            "process": FleetConfig(kind=FleetKind.PROCESS, workers=2, threads=1),
            "proc-reduce": FleetConfig(kind=FleetKind.PROCESS, workers=2, threads=1,
                                       aggregation=AggregationMode.REDUCE)}


def pids(sim: Simulation) -> list[int]:
    """This process and the fleet's worker processes."""
    out = [os.getpid()]
    fleet = sim.fleet
    if isinstance(fleet, ProcessFleet) and fleet._session is not None:
        out += [w.proc.pid for w in fleet._session.pool._list if w.proc.pid]
    return out


def resident_mib(processes: list[int], key: str) -> tuple[float, float]:
    """``key`` (VmRSS: now, VmHWM: peak) in MiB of the first process and of the others
    together."""
    values = []
    for pid in processes:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            values.append(next(int(line.split()[1]) for line in f
                               if line.startswith(key + ":")) / 1024)
    return (values[0] if values else 0.0), sum(values[1:])


def peak_memory(fleet: str, k: int, clients: int, chunk: int | None, rounds: int = 2) -> None:
    """In this fresh process: ``rounds`` rounds of cohort ``k`` on ``fleet``; prints as JSON the
    resident MiB before them (data, model, workers started) and the peak."""
    cores = os.cpu_count() or 1
    data, model_fn = workload(clients)
    with simulations(data, model_fn, fleet_configs(chunk, cores)[fleet], [k]) as sides, \
            torch_threads(cores):
        side = sides[k]
        side.sim.evaluate(side.state.params)  # the workers are up
        before = resident_mib(pids(side.sim), "VmRSS")
        for _ in range(rounds):
            side.step()
        peak = resident_mib(pids(side.sim), "VmHWM")
    print(json.dumps({"before": before, "peak": peak}))


def memory_table(fleets: list[str], cohorts: list[int], clients: int,
                 chunk: int | None) -> dict[tuple[str, int], dict[str, list[float]]]:
    """Each (fleet, cohort size) in its own interpreter: peaks of one setting only."""
    out = {}
    for fleet in fleets:
        for k in cohorts:
            cmd = [sys.executable, __file__, "--peak", fleet, str(k), str(clients),
                   *([] if chunk is None else ["--chunk", str(chunk)])]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out[fleet, k] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def workload(num_clients: int) -> tuple[FederatedData, ModelFn]:
    data = load_federated(DataConfig(name="mnist", num_clients=num_clients, partition="iid"),
                          seed=0)
    return data, model_factory(ModelConfig(name="mlp"), data.input_shape, data.num_classes)


@contextlib.contextmanager
def simulations(data: FederatedData, model_fn: ModelFn, cfg: FleetConfig,
                cohorts: list[int]) -> Iterator[dict[int, Side]]:
    """One simulation per cohort size, all on one fleet (built by the largest's)."""
    common = dict(data=data, model_fn=model_fn, algorithm=FedAvg(), client=CLIENT,
                  rounds=10**9, eval_every=10**9, seed=0)
    first = Simulation(cohort_size=max(cohorts), fleet=cfg, **common)  # type: ignore[arg-type]
    sims = {k: first if k == max(cohorts) else
            Simulation(cohort_size=k, fleet=first.fleet, **common)  # type: ignore[arg-type]
            for k in cohorts}
    try:
        yield {k: Side(sim, sim.state) for k, sim in sims.items()}
    finally:
        first.fleet.close()


def measure(name: str, cfg: FleetConfig, data: FederatedData, model_fn: ModelFn,
            cohorts: list[int], reps: int, cores: int,
            updates: int) -> tuple[dict[int, Side], float]:
    """Each cohort size's rounds on one fleet, interleaved, a sample being ``updates`` client
    updates (so many rounds of a small cohort); and the median evaluation."""
    evals: list[float] = []
    with simulations(data, model_fn, cfg, cohorts) as sides, torch_threads(cores):
        for side in sides.values():  # warm-up: first rounds, trace caches, workers' imports
            side.step()
        sides[cohorts[0]].sim.evaluate(sides[cohorts[0]].state.params)
        for rep in range(reps):
            order = cohorts[rep % len(cohorts):] + cohorts[:rep % len(cohorts)]
            for k in order:
                sides[k].sample(max(1, updates // k))
            sim = sides[cohorts[0]].sim
            start = time.perf_counter()
            sim.evaluate(sim.state.params)
            evals.append(time.perf_counter() - start)
        chunk = getattr(getattr(sides[cohorts[0]].sim.fleet, "trainer", None), "chunk", None)
        print(f"  {name}: done (load {os.getloadavg()[0]:.2f})"
              + ("" if chunk is None else f"; fleet.chunk {chunk}"), flush=True)
    return sides, statistics.median(evals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=int, nargs="+", default=[10, 100, 1000])
    names = ["vectorized", "vec-reduce", "process", "proc-reduce"]
    parser.add_argument("--fleets", nargs="+", default=names, choices=names)
    parser.add_argument("--chunk", type=int, default=None,
                        help="the vectorized fleet.chunk (default: the fleet's own)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--updates", type=int, default=1000,
                        help="client updates per timed sample (rounds of a small cohort)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--peak", nargs=3, metavar=("FLEET", "COHORT", "CLIENTS"),
                        help=argparse.SUPPRESS)  # one memory run (what the table starts)
    args = parser.parse_args()
    if args.peak:
        peak_memory(args.peak[0], int(args.peak[1]), int(args.peak[2]), args.chunk)
        return
    cores = os.cpu_count() or 1
    cohorts = sorted(args.cohorts)
    data, model_fn = workload(max(cohorts))
    per_client = sorted({len(i) for i in data.client_train})
    print(f"cohort scaling: 2NN, MNIST IID {data.num_clients} clients x {per_client} examples, "
          f"E=1 B=10; {cores} cores, load {os.getloadavg()[0]:.2f}; median of {args.reps} "
          f"samples of {args.updates} updates; vectorized fleet.chunk={args.chunk or 'auto'} "
          f"threads={cores}, process workers=2 threads=1")
    results = {name: measure(name, cfg, data, model_fn, cohorts, args.reps, cores, args.updates)
               for name, cfg in fleet_configs(args.chunk, cores).items() if name in args.fleets}
    memory = {} if args.no_memory else memory_table(list(results), cohorts, data.num_clients,
                                                    args.chunk)
    print(f"{'fleet':<11}{'cohort':>7}{'round s':>9}{'fit s':>8}{'agg s':>7}{'updates/s':>11}"
          f"{'with eval':>11}{'CPU ms/update':>15}{'MiB before':>12}{'peak':>7}"
          f"{'workers before':>16}{'peak':>7}")
    for name, (sides, evaluation) in results.items():
        ups: dict[int, tuple[float, float]] = {}
        for k in cohorts:
            s = sides[k]
            rnd = statistics.median(s.round_s)
            ups[k] = (k / rnd, k / (rnd + evaluation))
            mem = memory.get((name, k), {"before": [0.0, 0.0], "peak": [0.0, 0.0]})
            print(f"{name:<11}{k:>7}{rnd:>9.3f}{statistics.median(s.fit_s):>8.3f}"
                  f"{statistics.median(s.aggregate_s):>7.3f}{ups[k][0]:>11.1f}{ups[k][1]:>11.1f}"
                  f"{1000 * statistics.median(s.cpu_s) / k:>15.2f}{mem['before'][0]:>12.0f}"
                  f"{mem['peak'][0]:>7.0f}{mem['before'][1]:>16.0f}{mem['peak'][1]:>7.0f}")
        lo, hi = cohorts[0], cohorts[-1]
        fit_ratio, eval_ratio = ups[hi][0] / ups[lo][0], ups[hi][1] / ups[lo][1]
        print(f"{name}: evaluation {evaluation:.3f} s; updates/s at {hi} over {lo}: "
              f"{fit_ratio:.2f}x rounds alone (target >= 2x: "
              f"{'met' if fit_ratio >= 2 else 'NOT met'}), {eval_ratio:.2f}x with evaluation "
              f"every round")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
