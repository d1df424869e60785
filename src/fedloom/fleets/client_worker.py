"""What a fleet worker does: train clients and evaluate test-set slices, in a thread or process.

The thread fleet hands a :class:`ClientWorker` plain downlinks. The process fleet hands it
:class:`FitJob` / :class:`EvalJob` messages that name shared buffers instead of carrying
tensors: the worker reads the global parameters from the shared downlink rows and writes each
client's parameters into its slot of the shared uplink slab.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from fedloom.core.errors import ConfigError
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientConfig, ClientFailure, ClientResult, Downlink, Outcome
from fedloom.data.dataset import ArrayData, Examples
from fedloom.fleets.reduce import WeightedSum
from fedloom.fleets.serial import fit_one
from fedloom.fleets.shm import SharedArena, SharedRef
from fedloom.training.evaluation import CentralEvaluator
from fedloom.training.spec import ClientSpec

NO_DATA = ArrayData(x=torch.empty(0), y=torch.empty(0))


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceData(ArrayData):
    """ArrayData on an accelerator: batches accept index tensors on the CPU."""

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ArrayData.batch(self, idx.to(self.x.device, non_blocking=True))


def eval_slices(n: int, batch_size: int, parts: int) -> list[tuple[int, int]]:
    """Split ``[0, n)`` into at most ``parts`` contiguous slices on batch boundaries."""
    batches = -(-n // batch_size)
    cuts = [round(i * batches / parts) * batch_size for i in range(parts + 1)]
    return [(lo, min(hi, n)) for lo, hi in itertools.pairwise(cuts) if lo < min(hi, n)]


def vectorized_trainer() -> type:
    """The vectorized fleet's trainer class, or a ConfigError if this version has none."""
    name = "fedloom.fleets.vectorized"
    try:
        cls = getattr(importlib.import_module(name), "VectorizedTrainer", None)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        cls = None
    if not isinstance(cls, type):
        raise ConfigError(f"fleet.vectorize = True: {name}.VectorizedTrainer is not available "
                          f"in this version")
    return cls


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedData:
    """ArrayData whose tensors live in shared files."""

    x: SharedRef
    y: SharedRef
    mean: float
    std: float

    @classmethod
    def share(cls, data: ArrayData, arena: SharedArena) -> SharedData:
        return cls(x=arena.share(data.x), y=arena.share(data.y), mean=data.mean, std=data.std)

    def open(self, device: str) -> ArrayData:
        x, y = self.x.open(), self.y.open()
        if torch.device(device).type == "cpu":
            return ArrayData(x=x, y=y, mean=self.mean, std=self.std)
        return DeviceData(x=x.to(device), y=y.to(device), mean=self.mean, std=self.std)


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedSpec:
    """A ClientSpec whose tensors (train, test, client indices) live in shared files.

    It is also the process fleet's handler factory: ``SharedSpec(...)(index, device)`` builds a
    worker's :class:`ClientWorker`.
    """

    spec: ClientSpec  # with the tensors taken out
    train: SharedData | Examples  # examples generated on demand travel as themselves
    test: SharedData | None
    indices: SharedRef | Sequence[torch.Tensor]  # lazy index sequences travel as themselves
    sizes: tuple[int, ...]
    vectorized: type | None = None  # VectorizedTrainer, resolved (and pickled) by the parent
    chunk: int | None = None

    @classmethod
    def share(cls, spec: ClientSpec, arena: SharedArena, *, vectorized: type | None = None,
              chunk: int | None = None) -> SharedSpec:
        given = spec.client_indices
        lazy = not isinstance(given, tuple | list)
        indices: SharedRef | Sequence[torch.Tensor] = given if lazy else arena.share(
            (torch.cat(list(given)) if given else torch.empty(0)).long())
        train = spec.train
        return cls(spec=strip(spec),
                   train=SharedData.share(train, arena) if isinstance(train, ArrayData) else train,
                   test=None if spec.test is None else SharedData.share(spec.test, arena),
                   indices=indices, sizes=() if lazy else tuple(len(i) for i in given),
                   vectorized=vectorized, chunk=chunk)

    def open(self, device: str) -> ClientSpec:
        train = self.train.open(device) if isinstance(self.train, SharedData) \
            else self.train.to(device)
        indices = self.indices
        return replace(self.spec, train=train,
                       test=None if self.test is None else self.test.open(device),
                       client_indices=tuple(torch.split(indices.open(), list(self.sizes)))
                       if isinstance(indices, SharedRef) else indices)

    def __call__(self, index: int, device: str) -> ClientWorker:
        return ClientWorker(self.open(device), device, vectorized=self.vectorized,
                            chunk=self.chunk)


def strip(spec: ClientSpec) -> ClientSpec:
    """``spec`` without its data tensors: what is left is pickled for each worker."""
    return replace(spec, train=NO_DATA, client_indices=(), test=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class FitItem:
    """One client of a fit job: its own round (the seed of its batches; a hierarchy's clients
    train at different rounds in one job). ``extras`` (small per-client tensors such as
    SCAFFOLD's control variates) are pickled with the message for now."""

    slot: int
    client_id: int
    round: int
    row: int
    config: ClientConfig
    extras: Mapping[str, torch.Tensor]


@dataclass(frozen=True, slots=True, kw_only=True)
class FitJob:
    """Train ``items`` from rows of ``down``; each update goes to its slot of ``up``, or, with
    ``sums`` (``fleet.aggregation=reduce``), into the job's example-weighted sum, written to row
    ``sums_row`` of ``sums`` (:class:`~fedloom.fleets.reduce.WeightedSum`'s layout)."""

    round: int
    down: SharedRef
    up: SharedRef
    items: tuple[FitItem, ...]
    sums: SharedRef | None = None
    sums_row: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalJob:
    """Evaluate ``params`` (or row ``row`` of the buffer it names) on test ``[start, stop)``."""

    params: SharedRef | torch.Tensor
    row: int
    start: int
    stop: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Uplink:
    """A ClientResult without its params, which went into the slab."""

    client_id: int
    num_examples: int
    num_steps: int
    metrics: Mapping[str, Mean]
    extras: Mapping[str, torch.Tensor]


class ClientWorker:
    """One worker's trainer and evaluator (built once), answering fit and evaluate jobs."""

    def __init__(self, spec: ClientSpec, device: str, *, vectorized: type | None = None,
                 chunk: int | None = None) -> None:
        self.spec = spec
        self.device = device
        self.trainer = spec.trainer(device)
        # torch.optim imports torch._dynamo on first use (~1.5 s): pay it now, not in round 1
        torch.optim.SGD(self.trainer.params, lr=0.1)
        self.many = None if vectorized is None else vectorized(spec, device=device, chunk=chunk)
        self._evaluator: CentralEvaluator | None = None
        self._maps: dict[str, tuple[str, torch.Tensor]] = {}

    def fit(self, tasks: Sequence[Downlink]) -> list[Outcome]:
        if self.many is None:
            return [fit_one(self.trainer, t) for t in tasks]
        try:
            return list(self.many.fit_many(tasks))
        except Exception as exc:  # the whole share failed: each of its clients is a failure
            return [ClientFailure(round=t.round, client_id=t.client_id, stage="fit",
                                  message=f"{type(exc).__name__}: {exc}") for t in tasks]

    def evaluate_slice(self, params: torch.Tensor, start: int, stop: int) -> dict[str, Mean]:
        if self._evaluator is None:
            if self.spec.test is None:
                raise ConfigError("this fleet's ClientSpec has no test set to evaluate on")
            self._evaluator = CentralEvaluator(model_fn=self.spec.model_fn, test=self.spec.test,
                                               batch_size=self.spec.eval_batch_size,
                                               device=self.device)
        return self._evaluator.evaluate_slice(params, start, stop)

    def __call__(self, job: object) -> object:
        if isinstance(job, FitJob):
            return self._fit_job(job)
        if isinstance(job, Downlink):
            return self.fit([job])[0]
        if isinstance(job, EvalJob):
            params = job.params if isinstance(job.params, torch.Tensor) \
                else self._open("down", job.params)[job.row]
            return self.evaluate_slice(params, job.start, job.stop)
        raise TypeError(f"unknown job {type(job).__name__}")

    def _open(self, role: str, ref: SharedRef) -> torch.Tensor:
        """The shared buffer ``ref``, mapped once and kept until the parent moves it."""
        path, tensor = self._maps.get(role, ("", torch.empty(0)))
        if path != ref.path:
            tensor = ref.open()
            self._maps[role] = (ref.path, tensor)
        return tensor

    def _fit_job(self, job: FitJob) -> list[Uplink | ClientFailure]:
        down = self._open("down", job.down)
        tasks = [Downlink(round=i.round, client_id=i.client_id, params=down[i.row],
                          config=i.config, extras=i.extras) for i in job.items]
        outcomes = self.fit(tasks)
        if job.sums is not None:  # reduce: only the job's weighted sum leaves, in its row
            sums = self._open("sums", job.sums)
            total = WeightedSum(sums.shape[1] - 1)
            outcomes = total.add(outcomes)
            sums[job.sums_row].copy_(total.sums)
            return [_uplink(o) if isinstance(o, ClientResult) else o for o in outcomes]
        up = self._open("up", job.up)
        return [self._slotted(o, up, item) for o, item in zip(outcomes, job.items)]

    @staticmethod
    def _slotted(o: Outcome, up: torch.Tensor, item: FitItem) -> Uplink | ClientFailure:
        if isinstance(o, ClientFailure):
            return o
        try:
            up[item.slot].copy_(o.params)
        except RuntimeError as exc:
            return ClientFailure(round=o.round, client_id=o.client_id, stage="fit",
                                 message=f"update does not fit the layout: {exc}")
        return _uplink(o)


def _uplink(o: ClientResult) -> Uplink:
    return Uplink(client_id=o.client_id, num_examples=o.num_examples, num_steps=o.num_steps,
                  metrics=o.metrics, extras=o.extras)


def as_result(round: int, uplink: Uplink, params: torch.Tensor) -> ClientResult:
    return ClientResult(round=round, client_id=uplink.client_id, params=params,
                        num_examples=uplink.num_examples, num_steps=uplink.num_steps,
                        metrics=uplink.metrics, extras=uplink.extras)
