"""Many clients per round: client updates per second as the cohort grows (issue 17, item 4).

Workload: W1's model and local work (2NN, E=1, B=10, lr 0.1, FedAvg) on real MNIST split IID
into 1,000 clients of 60 examples, so that a cohort of 1,000 exists and every client update
costs the same at every cohort size (6 SGD steps of 10 examples). Cohorts of 10, 100 and 1,000
clients per round, on the vectorized fleet (``fleet.chunk`` clients stacked at a time, all cores)
and on the process fleet (2 workers, 1 thread each).

A round is what the round loop does (``run_round``): sample, configure, fit, check every update,
aggregate; its seconds give client updates per second. Central evaluation (10,000 test images,
spread over the process fleet's workers) does not depend on the cohort; it is timed apart, and
"with eval" is the throughput of rounds that also evaluate, as W1 does every round. Each fleet
runs every cohort size once untimed, then ``--reps`` rounds of each in rotating order; medians.
"CPU ms/update" (this process's CPU seconds in the round plus the workers' inside their handlers,
per update) is the cost per update that other load on a shared machine distorts least. Peak
memory: the peak resident set of this process, and of the workers together (shared pages,
the data and the K x P slab, counted in each), over the timed rounds of that cohort size, the
high-water marks reset before each round (``/proc/PID/clear_refs``). Target: 1,000 per round
>= 2x the updates per second of 10 per round. Run: ``python benchmarks/bench_scaling.py --reps 3``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from fedloom import ClientConfig, DataConfig, FedAvg, ModelConfig, Simulation, load_federated
from fedloom.core.packages import ServerState
from fedloom.core.threads import torch_threads
from fedloom.data.dataset import FederatedData
from fedloom.fleets import FleetConfig, FleetKind
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
    peak_mib: tuple[float, float] = (0.0, 0.0)  # this process, the workers together

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


def fleet_configs(chunk: int, cores: int) -> dict[str, FleetConfig]:
    return {"vectorized": FleetConfig(kind=FleetKind.VECTORIZED, chunk=chunk, threads=cores),
            "process": FleetConfig(kind=FleetKind.PROCESS, workers=2, threads=1)}


def pids(sim: Simulation) -> list[int]:
    """This process and the fleet's worker processes."""
    out = [os.getpid()]
    fleet = sim.fleet
    if isinstance(fleet, ProcessFleet) and fleet._session is not None:
        out += [w.proc.pid for w in fleet._session.pool._list if w.proc.pid]
    return out


def reset_peaks(processes: list[int]) -> None:
    for pid in processes:  # Linux: "5" resets the peak resident set (VmHWM) to the current one
        with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")


def peak_mib(processes: list[int]) -> tuple[float, float]:
    """Peak resident MiB of the first process and of the others together."""
    peaks = []
    for pid in processes:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            peaks.append(next(int(line.split()[1]) for line in f
                              if line.startswith("VmHWM:")) / 1024)
    return (peaks[0] if peaks else 0.0), sum(peaks[1:])


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
            cohorts: list[int], reps: int, cores: int) -> tuple[dict[int, Side], float]:
    """Each cohort size's rounds on one fleet, interleaved; and the median evaluation."""
    evals: list[float] = []
    with simulations(data, model_fn, cfg, cohorts) as sides, torch_threads(cores):
        for side in sides.values():  # warm-up: first rounds, trace caches, workers' imports
            side.step()
        sides[cohorts[0]].sim.evaluate(sides[cohorts[0]].state.params)
        for rep in range(reps):
            order = cohorts[rep % len(cohorts):] + cohorts[:rep % len(cohorts)]
            for k in order:
                side = sides[k]
                procs = pids(side.sim)
                reset_peaks(procs)
                seconds = side.step()
                peak = peak_mib(procs)
                side.peak_mib = (max(side.peak_mib[0], peak[0]), max(side.peak_mib[1], peak[1]))
                side.cpu_s.append(seconds["cpu"])
                side.round_s.append(seconds["round_seconds"])
                side.fit_s.append(seconds["fit_seconds"])
                side.aggregate_s.append(seconds["aggregate_seconds"])
            sim = sides[cohorts[0]].sim
            start = time.perf_counter()
            sim.evaluate(sim.state.params)
            evals.append(time.perf_counter() - start)
        print(f"  {name}: done (load {os.getloadavg()[0]:.2f})", flush=True)
    return sides, statistics.median(evals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--fleets", nargs="+", default=["vectorized", "process"],
                        choices=["vectorized", "process"])
    parser.add_argument("--chunk", type=int, default=25, help="the vectorized fleet.chunk")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    cohorts = sorted(args.cohorts)
    data = load_federated(DataConfig(name="mnist", num_clients=max(cohorts), partition="iid"),
                          seed=0)
    model_fn = model_factory(ModelConfig(name="mlp"), data.input_shape, data.num_classes)
    per_client = {len(i) for i in data.client_train}
    print(f"cohort scaling: 2NN, MNIST IID {data.num_clients} clients x {sorted(per_client)} "
          f"examples, E=1 B=10; {cores} cores, load {os.getloadavg()[0]:.2f}; median of "
          f"{args.reps}; vectorized fleet.chunk={args.chunk} threads={cores}, process "
          f"workers=2 threads=1")
    results = {name: measure(name, cfg, data, model_fn, cohorts, args.reps, cores)
               for name, cfg in fleet_configs(args.chunk, cores).items() if name in args.fleets}
    print(f"{'fleet':<11}{'cohort':>7}{'round s':>9}{'fit s':>8}{'agg s':>7}{'updates/s':>11}"
          f"{'with eval':>11}{'CPU ms/update':>15}{'peak MiB':>10}{'workers MiB':>13}")
    for name, (sides, evaluation) in results.items():
        ups: dict[int, tuple[float, float]] = {}
        for k in cohorts:
            s = sides[k]
            rnd = statistics.median(s.round_s)
            ups[k] = (k / rnd, k / (rnd + evaluation))
            print(f"{name:<11}{k:>7}{rnd:>9.3f}{statistics.median(s.fit_s):>8.3f}"
                  f"{statistics.median(s.aggregate_s):>7.3f}{ups[k][0]:>11.1f}{ups[k][1]:>11.1f}"
                  f"{1000 * statistics.median(s.cpu_s) / k:>15.2f}{s.peak_mib[0]:>10.0f}"
                  f"{s.peak_mib[1]:>13.0f}")
        lo, hi = cohorts[0], cohorts[-1]
        fit_ratio, eval_ratio = ups[hi][0] / ups[lo][0], ups[hi][1] / ups[lo][1]
        print(f"{name}: evaluation {evaluation:.3f} s; updates/s at {hi} over {lo}: "
              f"{fit_ratio:.2f}x rounds alone, {eval_ratio:.2f}x with evaluation every round "
              f"(target >= 2x: {'met' if eval_ratio >= 2 else 'NOT met'} with evaluation, "
              f"{'met' if fit_ratio >= 2 else 'not met'} without)")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
