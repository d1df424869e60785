"""Hierarchical FL in simulation: clients -> leaf aggregators -> ... -> the root, any depth.

Each root round, every aggregator the root selects runs its own ``rounds`` rounds with its own
cohort of its own collaborators and its own algorithm (its state kept between the root's
rounds; its model reset to the one its parent sends), then reports its model to its parent as
one result weighted by the examples of the clients that contributed to it (example-weighted, as
the root's FedAvg expects). Aggregators below one parent run in lockstep, so all the clients
that train at one step of the hierarchy go through the one fleet in one ``fit`` call: every fleet
runs a hierarchy, with its usual reproducibility.

A client's downlink round (its batches' seed) is its leaf's step: an aggregator running ``R``
rounds for its parent's step ``p`` numbers its own ``(p - 1) R + 1 .. p R``; a deployment's edge
program numbers them the same way, so it trains the simulation's exact batches.

Rows: one per root round (``level`` 0, with the evaluation) and one per round of every other
aggregator (``level``, ``node``, ``node_round``), each with the bytes its models moved down and
up.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedloom.algorithms.base import Algorithm
from fedloom.algorithms.client_store import ClientStateStore
from fedloom.core.errors import CheckpointError, ClientError
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import combine
from fedloom.core.packages import (
    ClientConfig,
    ClientFailure,
    ClientResult,
    Downlink,
    Outcome,
    ServerState,
    split_outcomes,
)
from fedloom.core.rng import SERVER, derive_seed
from fedloom.core.threads import torch_threads
from fedloom.fleets.base import Fleet
from fedloom.runtime.checkpoint import (
    Checkpoint,
    Checkpointer,
    record,
    restore_store,
    rows_up_to,
)
from fedloom.runtime.loop import EvaluateFn, History, LossesFn
from fedloom.runtime.sampling import Sampler, UniformSampler
from fedloom.runtime.sinks import Row, Sink
from fedloom.topology.tree import TreeNode

Batch = list[Downlink]
Outcomes = Mapping[int, Outcome]


class SubsetSampler:
    """Uniform cohorts of ``size`` drawn from ``ids`` (an aggregator's collaborators), seeded
    by (the run's seed, the aggregator's name, the round)."""

    def __init__(self, ids: Sequence[int], *, size: int, seed: int, name: str) -> None:
        self.ids = list(ids)
        self.size = min(size, len(self.ids))
        self._base = UniformSampler(num_clients=len(self.ids), size=self.size,
                                    seed=derive_seed(seed, 0, SERVER, f"node:{name}"))

    def sample(self, round: int, size: int | None = None) -> list[int]:
        k = min(self.size if size is None else size, len(self.ids))
        return sorted(self.ids[i] for i in self._base.sample(round, k))


@dataclass(slots=True, kw_only=True)
class Aggregator:
    """A built aggregator: its algorithm over collaborator ids (client ids at a leaf, child
    positions 0..m-1 above), its sampler, and its state between its parent's rounds."""

    node: TreeNode
    algorithm: Algorithm
    ids: list[int]
    sampler: Sampler
    store: ClientStateStore
    children: list[Aggregator] = field(default_factory=list)
    state: ServerState | None = None


class _Selection:
    def __init__(self, loop: HierarchicalLoop, agg: Aggregator, step: int,
                 params: torch.Tensor) -> None:
        self.size, self._loop, self._agg, self._step = agg.sampler.size, loop, agg, step
        self._params = params

    def sample(self, size: int) -> list[int]:
        return self._agg.sampler.sample(self._step, size)

    def losses(self, client_ids: Sequence[int]) -> dict[int, float]:
        if not self._agg.node.is_leaf or self._loop.losses is None:
            raise ClientError(f"aggregator {self._agg.node.name!r}: only the clients' own "
                              "losses can be asked for", round=self._step, stage="select")
        found = self._loop.fleet.client_losses(self._params, client_ids)
        found = found if found is not None else self._loop.losses(self._params, client_ids)
        return {c: m.value for c, m in found.items()}


@dataclass(slots=True)
class _Done:
    """One finished aggregator round."""

    state: ServerState
    results: list[ClientResult]
    failures: list[ClientFailure]
    cohort: list[int]
    bytes_down: int


def _nbytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class HierarchicalLoop:
    """Runs a hierarchy of aggregators (built by :func:`fedloom.topology.build.build_hierarchy`)
    over one fleet, ``rounds`` root rounds."""

    def __init__(self, *, root: Aggregator, fleet: Fleet, evaluate: EvaluateFn,
                 client: ClientConfig, rounds: int, layout: ParamLayout,
                 initial_params: torch.Tensor, eval_every: int = 1,
                 threads: int | None = None, sinks: Sequence[Sink] = (),
                 losses: LossesFn | None = None,
                 checkpointer: Checkpointer | None = None) -> None:
        self.root, self.fleet, self.evaluate, self.client = root, fleet, evaluate, client
        self.rounds, self.layout, self.eval_every = rounds, layout, eval_every
        self.initial_params, self.threads, self.sinks = initial_params, threads, list(sinks)
        self.losses, self.checkpointer = losses, checkpointer
        self.algorithm = root.algorithm
        self.state = root.algorithm.init(initial_params)
        self.rows: list[Row] = []
        self._node_rows: list[Row] = []
        self._cloud_round = 0
        self._root_rows = False  # collaborating (an edge program): the root's rounds are rows

    def aggregators(self) -> list[Aggregator]:
        out, todo = [], [self.root]
        while todo:
            agg = todo.pop(0)
            out.append(agg)
            todo.extend(agg.children)
        return out

    def run(self) -> History:
        start = len(self.rows)
        with torch_threads(self.threads):
            try:
                for t in range(self.state.round + 1, self.rounds + 1):
                    self.state, row = self.run_round(t)
                    for node_row in self._node_rows:
                        self.rows.append(node_row)
                        for sink in self.sinks:
                            sink.log(node_row)
                    record(row, last=self.rounds, rows=self.rows, sinks=self.sinks,
                           checkpointer=self.checkpointer, snapshot=self.snapshot)
            finally:
                self.fleet.close()
        rows = tuple(r for r in self.rows[start:] if r.get("level", 0) == 0)
        return History(rows=rows, final=self.state, layout=self.layout)

    def run_round(self, t: int) -> tuple[ServerState, Row]:
        """Root round ``t``: every step's clients trained in one fleet call."""
        start = time.perf_counter()
        self._node_rows, self._cloud_round = [], t
        gen = self._round(self.root, t, self.state)
        fit_seconds = 0.0
        try:
            batch = next(gen)
            while True:
                began = time.perf_counter()
                outcomes = {o.client_id: o for o in self.fleet.fit(t, batch)} if batch else {}
                fit_seconds += time.perf_counter() - began
                batch = gen.send(outcomes)
        except StopIteration as stop:
            done: _Done = stop.value
        fit_done = time.perf_counter()
        row = self._row(self.root, t, None, done)
        if t % self.eval_every == 0 or t == self.rounds:
            row.update(self.evaluate(done.state.params))
        else:
            row["test_loss"] = row["test_accuracy"] = None
        end = time.perf_counter()
        row.update(fit_seconds=fit_seconds, aggregate_seconds=fit_done - start - fit_seconds,
                   eval_seconds=end - fit_done, round_seconds=end - start)
        return done.state, row

    def collaborate(self, downlink: Downlink) -> Outcome:
        """Run the root aggregator's rounds for its parent's ``downlink`` over this loop's
        fleet (an edge program of a deployment, whose collaborators are remote): its model as
        one result, exactly as the simulated hierarchy computes it. Rows go to the sinks."""
        self._node_rows, self._cloud_round, self._root_rows = [], downlink.round, True
        gen = self._run_child(self.root, downlink)
        with torch_threads(self.threads):
            try:
                batch = next(gen)
                while True:
                    outcomes = {o.client_id: o for o in self.fleet.fit(downlink.round, batch)}
                    batch = gen.send(outcomes)
            except StopIteration as stop:
                outcome: Outcome = stop.value
        for row in self._node_rows:
            self.rows.append(row)
            for sink in self.sinks:
                sink.log(row)
        return outcome

    def _round(self, agg: Aggregator, step: int,
               state: ServerState) -> Generator[Batch, Outcomes, _Done]:
        """One round of ``agg`` at ``step``: yields the clients to train (all of its subtree's
        at each step), returns the aggregated state."""
        cohort = agg.algorithm.select(step, state, _Selection(self, agg, step, state.params))
        tasks = agg.algorithm.configure(step, state, cohort, self.client)
        if agg.node.is_leaf:
            got = yield tasks
            outcomes = [got[t.client_id] for t in tasks]
        else:
            finished = yield from _lockstep({t.client_id: self._run_child(
                agg.children[t.client_id], t) for t in tasks})
            outcomes = [finished[t.client_id] for t in tasks]
        results, failures = split_outcomes(outcomes, self.layout.size)
        needed = len(tasks) if agg.node.config.min_success is None \
            else agg.node.config.min_success
        if len(results) < needed:
            detail = "; ".join(f"{f.client_id} at {f.stage}: {f.message}" for f in failures)
            raise ClientError(f"aggregator {agg.node.name!r}: only {len(results)} of "
                              f"{len(tasks)} collaborators succeeded, min_success needs "
                              f"{needed}: {detail}", round=step, stage="fit")
        done = _Done(state=agg.algorithm.aggregate(step, state, results), results=results,
                     failures=failures, cohort=list(cohort),
                     bytes_down=sum(_nbytes([t.params, *t.extras.values()]) for t in tasks))
        if agg is not self.root or self._root_rows:
            self._node_rows.append(self._row(agg, self._cloud_round, step, done))
        return done

    def _run_child(self, child: Aggregator,
                   downlink: Downlink) -> Generator[Batch, Outcomes, Outcome]:
        """``child``'s rounds for its parent's ``downlink``; its model as one result."""
        base = child.state or child.algorithm.init(downlink.params)
        state = ServerState(round=base.round, params=downlink.params, extras=base.extras)
        examples: dict[int, int] = {}
        last: list[ClientResult] = []
        rounds = child.node.config.rounds
        for k in range(1, rounds + 1):
            done = yield from self._round(child, (downlink.round - 1) * rounds + k, state)
            state = done.state
            examples.update({r.client_id: r.num_examples for r in done.results})
            last = done.results
        child.state = state
        if not examples:
            return ClientFailure(round=downlink.round, client_id=downlink.client_id,
                                 stage="fit", message=f"aggregator {child.node.name!r} got no "
                                 "results")
        return ClientResult(round=downlink.round, client_id=downlink.client_id,
                            params=state.params, num_examples=sum(examples.values()),
                            num_steps=rounds, metrics=combine(r.metrics for r in last))

    def _row(self, agg: Aggregator, cloud_round: int, step: int | None, done: _Done) -> Row:
        train = combine(r.metrics for r in done.results)
        row: Row = {"round": cloud_round, "level": agg.node.depth, "node": agg.node.name,
                    "cohort_size": len(done.cohort), "num_results": len(done.results),
                    "num_failures": len(done.failures),
                    "train_loss": train["train_loss"].value if "train_loss" in train else None,
                    "bytes_down": done.bytes_down,
                    "bytes_up": sum(_nbytes([r.params, *r.extras.values()])
                                    for r in done.results)}
        if step is not None:
            row["node_round"] = step
        return row

    # ---- checkpoints ---------------------------------------------------------------------

    def snapshot(self) -> Checkpoint:
        """The root's state with every other aggregator's tensors and store beside it."""
        extras = dict(self.state.extras)
        store: dict[tuple[str, int], torch.Tensor] = {}
        rounds: dict[str, int] = {}
        for agg in self.aggregators():
            name = agg.node.name
            if agg is not self.root and agg.state is not None:
                extras.update({f"{name}/{k}": v for k, v in agg.state.extras.items()})
                rounds[name] = agg.state.round
            store.update({(f"{name}/{key}", cid): v.clone()
                          for (key, cid), v in agg.store.items()})
        return Checkpoint(state=ServerState(round=self.state.round, params=self.state.params,
                                            extras=extras),
                          store=store, rows=tuple(self.rows), info={"nodes": rounds})

    def restore(self, ckpt: Checkpoint, directory: Path) -> None:
        by_name = {agg.node.name: agg for agg in self.aggregators()}
        got = ckpt.state
        if got.params.shape != self.state.params.shape:
            raise CheckpointError(f"{directory}: tensor 'params' has {got.params.numel()} "
                                  f"values, this run's model {self.state.params.numel()}")
        nodes = ckpt.info.get("nodes", {})
        if not isinstance(nodes, dict) or not set(nodes) <= set(by_name):
            raise CheckpointError(f"{directory}: key 'info' names aggregators this topology "
                                  f"lacks: {sorted(set(nodes) - set(by_name))}")
        root_extras = {k: v for k, v in got.extras.items() if "/" not in k}
        if set(root_extras) != set(self.state.extras):
            raise CheckpointError(f"{directory}: the root's tensors are {sorted(root_extras)}, "
                                  f"this run's root algorithm keeps {sorted(self.state.extras)}")
        self.state = ServerState(round=got.round, params=got.params, extras=root_extras)
        for name, agg in by_name.items():
            prefix = f"{name}/"
            if name in nodes:
                agg.state = ServerState(round=int(nodes[name]), params=got.params, extras={
                    k.removeprefix(prefix): v for k, v in got.extras.items()
                    if k.startswith(prefix)})
            restore_store(agg.store, {(key.removeprefix(prefix), cid): v
                                      for (key, cid), v in ckpt.store.items()
                                      if key.startswith(prefix)})
        self.rows = rows_up_to(ckpt.rows, got.round)


def _lockstep(children: dict[int, Generator[Batch, Outcomes, Outcome]]
              ) -> Generator[Batch, Outcomes, dict[int, Outcome]]:
    """Drive sibling aggregators together: each step, the union of their clients."""
    pending: dict[int, Batch] = {}
    finished: dict[int, Outcome] = {}
    for key, gen in children.items():
        try:
            pending[key] = next(gen)
        except StopIteration as stop:
            finished[key] = stop.value
    while pending:
        outcomes = yield [d for batch in pending.values() for d in batch]
        following: dict[int, Batch] = {}
        for key in pending:
            try:
                following[key] = children[key].send(outcomes)
            except StopIteration as stop:
                finished[key] = stop.value
        pending = following
    return finished

