"""The distributed fleet: a round's clients spread over the ranks of ``torchrun``.

Launch (gloo on CPU, NCCL when the ranks' devices are GPUs)::

    torchrun --nproc_per_node=2 -m fedloom run CONFIG fleet.kind=distributed
    torchrun --nnodes=2 --nproc_per_node=4 --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT \\
        -m fedloom run CONFIG fleet.kind=distributed      # the same on every machine

Every rank builds the same Simulation from the same config (same seed: same data, initial model
and cohorts). Rank 0 runs the server loop (sampling, configure, aggregate, sinks, the run
directory). The other ranks are *workers*: ``Simulation.run`` sees ``fleet.is_worker`` and calls
:meth:`DistributedFleet.serve`, which waits for rank 0's messages, trains, answers, and returns
when rank 0 says stop; ``run_experiment`` writes nothing on them. Without torchrun's environment
the fleet is a :class:`ConfigError` telling how to launch it (there is no implicit world of one).

A round: rank 0 broadcasts a 4-number control tensor and one body with the tasks' metadata
(client ids, ClientConfig fields; JSON, nothing pickled) and the tensors they reference, each
once: for FedAvg that is the flat global model, so the model moves in ONE broadcast. When the
round trains from the model just broadcast for evaluation, the body does not repeat it. Clients
sorted by id are dealt round-robin: rank r trains the cohort's clients r, r + W, r + 2W, ...
(rank 0 too), on its own trainer, vectorized when ``fleet.vectorize`` is on. A tensor only one
worker's clients use (a client's own state: SCAFFOLD's c_i, Ditto's personal model) goes to
that rank alone, point to point, after the broadcast; rank 0's clients' own tensors stay put.

Aggregation (``fleet.aggregation``):

* ``exact`` (default): each rank packs its clients' flat updates, extras, example counts and
  metrics into one buffer; an all_reduce(max) of the sizes and one ``gather`` bring them to rank
  0, where the algorithm aggregates the results sorted by client id exactly as on the serial
  fleet. Final models are bitwise identical to the serial fleet's for any number of ranks on the
  same device with the same torch threads per client (``fleet.threads=1`` against a serial
  fleet with ``threads=1``).
* ``reduce``: for algorithms declaring ``reducible`` (the aggregate depends on the results only
  through the example-weighted mean sum_k n_k x_k / sum_k n_k; FedAvg does), each rank sums
  n_k x_k (:class:`~fedloom.fleets.reduce.WeightedSum`: one float32 matrix-vector product added
  into float64) with sum_k n_k appended, ONE ``reduce`` to rank 0 adds the ranks' sums and
  the mean is rounded to the parameter dtype once; only metadata is gathered, and every result
  rank 0 returns carries that mean as its ``params`` (one tensor, which the aggregate then
  averages to itself). It differs from exact mode by float32 rounding of the serial weighted
  sum: the tests hold it to |reduce - exact| <= 1e-6 + 1e-5 |exact| after 3 rounds. Other
  algorithms (``ClientSpec.reducible`` False) fall back to exact, with a warning.

Evaluation is spread: each rank evaluates a contiguous run of whole eval batches of the test
set, and one reduce of the float64 (sum, weight) pairs gives the metrics, equal to the central
evaluator's up to float64 summation order (accuracy exactly).

Failures: a client that raises on any rank reaches rank 0 as a :class:`ClientFailure` value;
a non-finite update is turned into one before it can enter a reduce. Collectives time out after
``FEDLOOM_DIST_TIMEOUT`` seconds (600; it must exceed a round's training) and then raise a
:class:`TransportError`, as does a rank that died. When rank 0 stops, finished or on an
exception, :meth:`close` sends the stop message (best effort, 10 s) and destroys the group.
``fleet.devices`` assigns ranks to devices round-robin by local rank (default: ``cuda:LOCAL_RANK``
when CUDA is available, else cpu); ``fleet.threads`` is each rank's torch threads while it
trains (default: the cores divided among the node's ranks).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from typing import Protocol

import torch
import torch.distributed as dist

from fedloom.core.errors import TransportError
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientFailure, Downlink, Outcome
from fedloom.core.threads import torch_threads
from fedloom.fleets.base import FleetBase
from fedloom.fleets.client_worker import vectorized_trainer
from fedloom.fleets.config import FleetConfig, FleetKind
from fedloom.fleets.dist_env import DistEnv, init_group, read_env
from fedloom.fleets.dist_wire import (
    CONTROL_SIZE,
    Op,
    TensorTable,
    control,
    decode_outcomes,
    decode_share,
    encode_outcomes,
    encode_round,
    pack,
    unpack,
)
from fedloom.fleets.reduce import WeightedSum, reduces
from fedloom.fleets.serial import fit_one
from fedloom.training.evaluation import CentralEvaluator
from fedloom.training.spec import ClientSpec

log = logging.getLogger(__name__)

STOP_WAIT = timedelta(seconds=10)
ShareFn = Callable[[Sequence[Downlink]], list[Outcome]]


class ManyClientTrainer(Protocol):
    """What ``fleet.vectorize`` needs: ``fedloom.fleets.vectorized.VectorizedTrainer``."""

    def fit_many(self, tasks: Sequence[Downlink]) -> list[Outcome]: ...


@contextmanager
def lost_ranks(where: str) -> Iterator[None]:
    """A failed collective (a rank crashed, a timeout) as a TransportError saying where."""
    try:
        yield
    except RuntimeError as err:  # torch.distributed's errors (DistBackendError, timeouts)
        raise TransportError(f"distributed fleet: a collective failed {where}; another rank "
                             f"probably stopped or timed out (see its log): {err}") from err


def to_cpu(outcome: Outcome) -> Outcome:
    if isinstance(outcome, ClientFailure) or outcome.params.device.type == "cpu":
        return outcome
    return dataclasses.replace(outcome, params=outcome.params.cpu(),
                               extras={k: v.cpu() for k, v in outcome.extras.items()})


def share_of(tasks: Sequence[Downlink], rank: int, world: int) -> list[Downlink]:
    """Rank ``rank``'s clients: every ``world``-th of the cohort sorted by client id."""
    return sorted(tasks, key=lambda t: t.client_id)[rank::world]


class DistributedFleet(FleetBase):
    """One rank's part of a fleet spread over torch.distributed ranks (see the module doc).

    Attributes:
        is_worker: True on ranks other than 0, which call :meth:`serve` instead of the loop.
        reduces: ``fleet.aggregation`` is ``reduce`` and the algorithm is reducible: ``fit``
            reduces the updates to their example-weighted mean.
    """

    def __init__(self, spec: ClientSpec, cfg: FleetConfig | None = None) -> None:
        cfg = cfg or FleetConfig(kind=FleetKind.DISTRIBUTED)
        self.env: DistEnv = read_env(cfg)
        self.spec = spec
        self.is_worker = self.env.rank != 0
        self.reduces = reduces(cfg, spec)
        self.threads = cfg.threads or max(1, (os.cpu_count() or 1) // self.env.local_world_size)
        self.layout = ParamLayout.from_module(spec.model_fn())
        self._fit_share = self._share_trainer(cfg)
        self.evaluator = None if spec.test is None else CentralEvaluator(
            model_fn=spec.model_fn, test=spec.test, batch_size=spec.eval_batch_size,
            device=self.env.device)
        self._sent: list[tuple[torch.Tensor, int]] = []  # rank 0: the last body's tensors
        self._received: list[torch.Tensor] = []  # workers: the last body's tensors
        self._closed = False
        self._owns_group = init_group(self.env)
        log.debug("distributed fleet: rank %d of %d on %s (%s), %d threads", self.env.rank,
                  self.env.world_size, self.env.device, self.env.backend, self.threads)

    def _share_trainer(self, cfg: FleetConfig) -> ShareFn:
        device = self.env.device
        if not cfg.vectorize:
            trainer = self.spec.trainer(device)
            return lambda share: [fit_one(trainer, t) for t in share]
        many: ManyClientTrainer = vectorized_trainer()(self.spec, device=device, chunk=cfg.chunk)

        def fit_many(share: Sequence[Downlink]) -> list[Outcome]:
            try:
                return list(many.fit_many(share))
            except Exception as exc:  # the whole batch failed: each client is a failure
                log.warning("vectorized clients %s failed: %s", [t.client_id for t in share], exc)
                return [ClientFailure(round=t.round, client_id=t.client_id, stage="fit",
                                      message=f"{type(exc).__name__}: {exc}") for t in share]
        return fit_many

    # ---- rank 0: the Fleet protocol -------------------------------------------------------

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]:
        """Train the cohort over all ranks; every outcome, sorted by client id. Reducing, each
        result's ``params`` is the one example-weighted mean of the usable updates."""
        return self._server_fit(Op.REDUCE if self.reduces else Op.FIT, round, tasks)[0]

    def evaluate(self, params: torch.Tensor) -> dict[str, Mean] | None:
        """The test metrics of ``params``, each rank evaluating a slice of the test set."""
        if self.evaluator is None:
            return None
        self._require_server("evaluate")
        self._broadcast(Op.EVALUATE, 0, [], [params])
        return self._evaluate_share(params)

    def close(self) -> None:
        """Rank 0 tells the workers to stop (best effort); the process group is destroyed."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.is_worker and dist.is_initialized():
                work = dist.broadcast(control(Op.STOP).to(self.env.device), src=0,
                                      async_op=True)
                if work is not None:
                    work.wait(timeout=STOP_WAIT)
        except Exception as exc:  # the workers may be gone already; closing goes on
            log.warning("distributed fleet: could not tell the workers to stop: %s", exc)
        finally:
            if self._owns_group and dist.is_initialized():
                dist.destroy_process_group()

    def _server_fit(self, op: Op, round: int,
                    tasks: Sequence[Downlink]) -> tuple[list[Outcome], torch.Tensor | None]:
        self._require_server("fit")
        ordered = sorted(tasks, key=lambda t: t.client_id)
        world = self.env.world_size
        meta, shared, private = encode_round(ordered, world)
        bodies = [pack([], table.tensors, self.env.device) if table.tensors else None
                  for table in private]
        sizes = [0 if body is None else body.numel() for body in bodies]
        self._broadcast(op, round, {"tasks": meta, "own": sizes}, shared.tensors)
        with self._collective(f"sending the clients' own tensors (round {round})"):
            for rank, body in enumerate(bodies[1:], start=1):
                if body is not None:  # a client's own state goes to its rank alone
                    dist.send(body, dst=rank)
        return self._answer(op, self._train(share_of(ordered, 0, world)))

    def _collective(self, what: str) -> AbstractContextManager[None]:
        return lost_ranks(f"{what} on rank {self.env.rank}")

    def _require_server(self, what: str) -> None:
        if self.is_worker:
            raise RuntimeError(f"DistributedFleet.{what} runs on rank 0; rank {self.env.rank} "
                               "is a worker and must call serve()")

    def _broadcast(self, op: Op, round: int, meta: object,
                   tensors: Sequence[torch.Tensor]) -> None:
        reuse = len(tensors) == len(self._sent) and all(
            t is s and t._version == v for t, (s, v) in zip(tensors, self._sent))
        body = pack(meta, [] if reuse else tensors, self.env.device)
        with self._collective(f"sending {op.name.lower()} (round {round})"):
            dist.broadcast(control(op, round, body.numel(), reuse).to(self.env.device), src=0)
            dist.broadcast(body, src=0)
        self._sent = [(t, t._version) for t in tensors]

    # ---- workers ----------------------------------------------------------------------------

    def serve(self) -> None:
        """On a worker rank: train and evaluate what rank 0 sends until it says stop."""
        while True:
            head = torch.empty(CONTROL_SIZE, dtype=torch.int64, device=self.env.device)
            with self._collective("waiting for rank 0"):
                dist.broadcast(head, src=0)
            op_code, round, body_len, reuse = (int(v) for v in head.tolist())
            op = Op(op_code)
            if op is Op.STOP:
                return
            body = torch.empty(body_len, dtype=torch.uint8, device=self.env.device)
            with self._collective(f"receiving {op.name.lower()} (round {round})"):
                dist.broadcast(body, src=0)
            meta, tensors = unpack(body)
            if reuse:
                tensors = self._received
            self._received = tensors
            if op is Op.EVALUATE:
                self._evaluate_share(tensors[0])
                continue
            own: list[torch.Tensor] = []
            size = int(meta["own"][self.env.rank])
            if size:
                own_body = torch.empty(size, dtype=torch.uint8, device=self.env.device)
                with self._collective(f"receiving the clients' own tensors (round {round})"):
                    dist.recv(own_body, src=0)
                own = unpack(own_body)[1]
            share = decode_share(round, meta["tasks"], self.env.rank, self.env.world_size,
                                 tensors, own)
            self._answer(op, self._train(share))

    # ---- every rank -------------------------------------------------------------------------

    def _train(self, share: Sequence[Downlink]) -> list[Outcome]:
        """Train this rank's share of the cohort (see :func:`share_of`)."""
        if not share:
            return []
        with torch_threads(self.threads):
            return self._fit_share(share)

    def _answer(self, op: Op, outcomes: list[Outcome]) -> tuple[list[Outcome],
                                                                 torch.Tensor | None]:
        """Send this rank's outcomes to rank 0; there, all of them (and the reduced mean)."""
        if op is Op.REDUCE:
            return self._reduce(outcomes)
        if self.is_worker:
            table = TensorTable()
            self._gather(pack(encode_outcomes(outcomes, table), table.tensors, self.env.device))
            return [], None
        own = [to_cpu(o) for o in outcomes]  # rank 0 keeps its own outcomes as they are
        bodies = self._gather(pack([], [], self.env.device))
        for body in bodies[1:]:
            own += decode_outcomes(*unpack(body.cpu()))
        return sorted(own, key=lambda o: o.client_id), None

    def _reduce(self, outcomes: list[Outcome]) -> tuple[list[Outcome], torch.Tensor | None]:
        total = WeightedSum(self.layout.size, self.env.device)
        outcomes = total.add(outcomes)
        with self._collective("reducing the updates"):
            dist.reduce(total.sums, dst=0)
        bodies = self._gather(pack(encode_outcomes(outcomes, None), [], self.env.device))
        if self.is_worker:
            return [], None
        merged: list[Outcome] = []
        for body in bodies:
            merged += decode_outcomes(*unpack(body.cpu()))
        merged.sort(key=lambda o: o.client_id)
        return total.results(merged, self.layout.dtype), None

    def _gather(self, body: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's body at rank 0 (padded to the longest); [] elsewhere."""
        length = torch.tensor([body.numel()], dtype=torch.int64, device=self.env.device)
        with self._collective("gathering outcomes"):
            dist.all_reduce(length, op=dist.ReduceOp.MAX)
        n = int(length.item())
        if body.numel() < n:
            padded = torch.empty(n, dtype=torch.uint8, device=self.env.device)
            padded[:body.numel()].copy_(body)
            body = padded
        bodies = [torch.empty(n, dtype=torch.uint8, device=self.env.device)
                  for _ in range(self.env.world_size)] if not self.is_worker else None
        with self._collective("gathering outcomes"):
            dist.gather(body, bodies, dst=0)
        return bodies or []

    def _evaluate_share(self, params: torch.Tensor) -> dict[str, Mean] | None:
        assert self.evaluator is not None  # evaluate() sends nothing without a test set
        n = len(self.evaluator.test)
        size = self.spec.eval_batch_size
        batches = -(-n // size)
        rank, world = self.env.rank, self.env.world_size
        start = min(rank * batches // world * size, n)
        stop = min((rank + 1) * batches // world * size, n)
        with torch_threads(self.threads):
            part = self.evaluator.evaluate_slice(params, start, stop)
        keys = sorted(part)
        sums = torch.tensor([x for k in keys for x in (part[k].total, part[k].weight)],
                            dtype=torch.float64, device=self.env.device)
        with self._collective("reducing test metrics"):
            dist.reduce(sums, dst=0)
        if self.is_worker:
            return None
        values = sums.cpu().tolist()
        return {k: Mean(values[2 * i], values[2 * i + 1]) for i, k in enumerate(keys)}
