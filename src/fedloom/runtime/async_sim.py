"""Asynchronous federated learning on a simulated clock.

``concurrency`` clients train at once. Each starts from the newest global model, finishes after
``num_steps * step_time`` simulated seconds (:class:`ClientClock`), and the server sees results in
simulated-time order, each with its staleness (model versions since the client started). When a
client finishes, another idle client starts. Training itself runs lazily on the fleet: all starts
whose results are not needed yet are trained together in one ``fleet.fit`` call, so parallel and
vectorized fleets speed up async runs too. One metrics row per new global model version, with
``sim_time`` beside the wall-clock figures.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from fedloom.algorithms.asynchronous import AsyncAlgorithm
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean, combine
from fedloom.core.packages import ClientConfig, ClientResult, Downlink
from fedloom.core.rng import SERVER, Purpose, torch_generator
from fedloom.core.threads import torch_threads
from fedloom.data.dataset import FederatedData
from fedloom.fleets import Fleet, FleetConfig, FleetKind, make_fleet
from fedloom.models import ModelFn, init_module
from fedloom.runtime.clock import ClientClock, ClockConfig
from fedloom.runtime.loop import EvaluateFn
from fedloom.runtime.simulation import History
from fedloom.runtime.sinks import Row, Sink
from fedloom.training.evaluation import CentralEvaluator, RoundEvaluator
from fedloom.training.spec import ClientSpec
from fedloom.training.trainer import LossFn


def version_row(*, version: int, versions: int, eval_every: int,
                evaluate: EvaluateFn, params: torch.Tensor,
                consumed: int, staleness: Sequence[int], metrics: Sequence[Mapping[str, Mean]],
                **fields: float | int | None) -> Row:
    """The metrics row of one new global model of an async run (simulated or deployed):
    ``fields`` (the runner's own columns), updates consumed, mean staleness, train loss, and the
    evaluation on its cadence (the last version always)."""
    train = combine(metrics)
    row: Row = {"round": version, **fields, "client_updates": consumed,
                "mean_staleness": sum(staleness) / max(len(staleness), 1),
                "train_loss": train["train_loss"].value if "train_loss" in train else None}
    if version % eval_every == 0 or version == versions:
        start = time.perf_counter()
        row.update(evaluate(params))
        row["eval_seconds"] = time.perf_counter() - start
    else:
        row["test_accuracy"] = row["test_loss"] = None
    return row


def run_closing(fleet: Fleet, threads: int | None,
                loop: Callable[[], list[Row]]) -> list[Row]:
    """Run an async loop under the run's torch thread count; the fleet is closed however it
    ends."""
    with torch_threads(threads):
        try:
            return loop()
        finally:
            fleet.close()


def local_steps(num_examples: int, cfg: ClientConfig) -> int:
    """How many SGD steps a client with ``num_examples`` takes under ``cfg``."""
    if cfg.steps is not None:
        return cfg.steps
    per_epoch = 1 if cfg.batch_size == 0 else math.ceil(num_examples / cfg.batch_size)
    return cfg.epochs * per_epoch


@dataclass(order=True)
class _Job:
    finish: float
    seq: int
    client_id: int = field(compare=False)
    downlink: Downlink = field(compare=False)
    start_version: int = field(compare=False)
    result: ClientResult | None = field(default=None, compare=False)
    failed: bool = field(default=False, compare=False)


class AsyncSimulation:
    """Runs an :class:`AsyncAlgorithm` until ``versions`` new global models were made."""

    def __init__(self, *, data: FederatedData, model_fn: ModelFn, algorithm: AsyncAlgorithm,
                 client: ClientConfig, versions: int, clock: ClockConfig, seed: int = 0,
                 fleet: str | FleetConfig | Fleet = "serial", eval_every: int = 1,
                 eval_batch_size: int = 1000, eval_train: bool = False,
                 eval_federated: bool = False, threads: int | None = None,
                 loss_fn: LossFn = F.cross_entropy, sinks: Sequence[Sink] = ()) -> None:
        self.data, self.algorithm, self.client = data, algorithm, client
        self.versions, self.seed, self.eval_every = versions, seed, eval_every
        self.threads = threads
        self.concurrency = min(clock.concurrency, data.num_clients)
        self.clock = ClientClock(clock, num_clients=data.num_clients, seed=seed)
        self.sinks = list(sinks)
        model = init_module(model_fn, seed)
        self.layout = ParamLayout.from_module(model)
        self.state = algorithm.init(self.layout.module_to_flat(model))
        spec = ClientSpec(model_fn=model_fn, train=data.train, client_indices=data.client_train,
                          seed=seed, local=algorithm.local, loss_fn=loss_fn, test=data.test,
                          eval_batch_size=eval_batch_size)
        if isinstance(fleet, str):
            fleet = FleetConfig(kind=FleetKind(fleet))
        self.fleet = make_fleet(fleet, spec) if isinstance(fleet, FleetConfig) else fleet
        central = CentralEvaluator(model_fn=model_fn, test=data.test, batch_size=eval_batch_size)
        self.evaluate = RoundEvaluator(central=central, model_fn=model_fn, data=data,
                                       batch_size=eval_batch_size, train=eval_train,
                                       federated=eval_federated)
        self._queue: list[_Job] = []
        self._busy: set[int] = set()
        self._starts = 0

    def _start(self, now: float) -> None:
        idle = [c for c in range(self.data.num_clients) if c not in self._busy]
        gen = torch_generator(self.seed, self._starts, SERVER, Purpose.COHORT)
        cid = idle[int(torch.randint(len(idle), (1,), generator=gen))]
        downlink = dataclasses.replace(self.algorithm.configure(self.state, cid, self.client),
                                       round=self._starts + 1)
        steps = local_steps(self.data.num_examples(cid), downlink.config)
        heapq.heappush(self._queue, _Job(now + self.clock.duration(cid, steps), self._starts,
                                         cid, downlink, self.state.round))
        self._busy.add(cid)
        self._starts += 1

    def _train_pending(self) -> float:
        """Train every queued job that has no result yet, in one fleet call; wall seconds."""
        pending = [j for j in self._queue if j.result is None and not j.failed]
        start = time.perf_counter()
        outcomes = {o.client_id: o for o in self.fleet.fit(
            self._starts, [j.downlink for j in pending])}
        for j in pending:
            o = outcomes[j.client_id]
            if isinstance(o, ClientResult) and bool(torch.isfinite(o.params).all()):
                j.result = o
            else:
                j.failed = True
        return time.perf_counter() - start

    def run(self) -> History:
        rows = run_closing(self.fleet, self.threads, self._loop)
        return History(rows=tuple(rows), final=self.state, layout=self.layout)

    def _loop(self) -> list[Row]:
        rows: list[Row] = []
        for _ in range(self.concurrency):
            self._start(0.0)
        consumed, fit_seconds = 0, 0.0
        staleness: list[int] = []
        metrics: list[Mapping[str, Mean]] = []
        while self.state.round < self.versions:
            job = heapq.heappop(self._queue)
            if job.result is None and not job.failed:
                fit_seconds += self._train_pending()
            self._busy.discard(job.client_id)
            if job.result is not None:
                lag = self.state.round - job.start_version
                self.state, changed = self.algorithm.on_result(
                    self.state, job.result, job.downlink.params, lag)
                consumed += 1
                staleness.append(lag)
                metrics.append(job.result.metrics)
                if changed:
                    rows.append(self._row(job.finish, consumed, fit_seconds, staleness, metrics))
                    fit_seconds, staleness, metrics = 0.0, [], []
            self._start(job.finish)
        return rows

    def _row(self, now: float, consumed: int, fit_seconds: float, staleness: list[int],
             metrics: Sequence[Mapping[str, Mean]]) -> Row:
        row = version_row(version=self.state.round, versions=self.versions,
                          eval_every=self.eval_every, evaluate=self.evaluate,
                          params=self.state.params, consumed=consumed, staleness=staleness,
                          metrics=metrics, sim_time=now, fit_seconds=fit_seconds)
        for sink in self.sinks:
            sink.log(row)
        return row
