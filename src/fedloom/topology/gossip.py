"""Decentralized FL without a root: D-PSGD-style gossip (Lian et al., NeurIPS 2017).

Every client is a node with its own model. Each round every node trains locally from its own
model (all of them in one ``fleet.fit``), then takes the weighted average of its neighbours'
(and its own) new models through a doubly stochastic mixing matrix ``W``: ``X <- W Y``.
Metropolis-Hastings weights by default (``W_ij = 1 / (1 + max(deg_i, deg_j))`` on each link,
the rest on the diagonal), which need only each node's and its neighbours' degrees.

The graphs: a ring, a 2-D torus, a random ``d``-regular graph (seeded) or any list of links;
each is checked connected. Rows report the mean model's evaluation and the consensus distance
``mean_i ||x_i - mean x||^2``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fedloom.core.errors import ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import combine
from fedloom.core.packages import ClientConfig, ClientResult, Downlink, ServerState, checked
from fedloom.core.rng import SERVER, numpy_generator
from fedloom.core.threads import torch_threads
from fedloom.fleets.base import Fleet
from fedloom.runtime.checkpoint import Checkpoint, Checkpointer, check_resumable, record
from fedloom.runtime.checkpoint import rows_up_to as _rows_up_to
from fedloom.runtime.loop import EvaluateFn, History
from fedloom.runtime.sinks import Row, Sink
from fedloom.topology.config import GraphKind, Mixing

Links = list[tuple[int, int]]


def ring(n: int) -> Links:
    if n < 3:
        raise ConfigError(f"topology.graph = ring: needs at least 3 nodes, the run has {n}")
    return sorted((min(i, (i + 1) % n), max(i, (i + 1) % n)) for i in range(n))


def torus(n: int, rows: int | None = None) -> Links:
    """A ``rows x cols`` grid wrapped both ways (``rows`` default: the squarest split)."""
    rows = rows or max(r for r in range(1, int(n ** 0.5) + 1) if n % r == 0)
    if n % rows or rows < 3 or n // rows < 3:
        raise ConfigError(f"topology.rows = {rows}: a torus of {n} nodes needs rows and "
                          f"columns of at least 3 that multiply to {n}")
    cols = n // rows
    links = set()
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            for j in (r * cols + (c + 1) % cols, ((r + 1) % rows) * cols + c):
                links.add((min(i, j), max(i, j)))
    return sorted(links)


def regular(n: int, degree: int, seed: int, attempts: int = 200) -> Links:
    """A random simple ``degree``-regular graph (pairing model, retried until simple and
    connected), drawn from the run's seed."""
    if not 0 < degree < n or n * degree % 2:
        raise ConfigError(f"topology.degree = {degree}: a {degree}-regular graph on {n} nodes "
                          "needs 0 < degree < nodes and nodes * degree even")
    rng = numpy_generator(seed, 0, SERVER, "gossip-graph")
    for _ in range(attempts):
        stubs = np.repeat(np.arange(n), degree)
        rng.shuffle(stubs)
        pairs = {(int(min(a, b)), int(max(a, b))) for a, b in stubs.reshape(-1, 2)}
        if len(pairs) == n * degree // 2 and all(a != b for a, b in pairs) \
                and _components(n, sorted(pairs)) == 1:
            return sorted(pairs)
    raise ConfigError(f"topology.degree = {degree}: no simple connected {degree}-regular graph "
                      f"on {n} nodes found in {attempts} draws")


def check_links(n: int, links: Sequence[tuple[int, int]]) -> Links:
    out = set()
    for a, b in links:
        if not (0 <= a < n and 0 <= b < n):
            raise ConfigError(f"topology.links: the link [{a}, {b}] names a node outside "
                              f"[0, {n})")
        if a == b:
            raise ConfigError(f"topology.links: node {a} is linked to itself")
        out.add((min(a, b), max(a, b)))
    return sorted(out)


def _components(n: int, links: Links) -> int:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in links:
        parent[find(a)] = find(b)
    return len({find(i) for i in range(n)})


def graph_links(kind: GraphKind, n: int, *, degree: int = 4, rows: int | None = None,
                links: Sequence[tuple[int, int]] = (), seed: int = 0) -> Links:
    """The links of the configured graph on ``n`` nodes, checked connected."""
    if kind == GraphKind.RING:
        out = ring(n)
    elif kind == GraphKind.TORUS:
        out = torus(n, rows)
    elif kind == GraphKind.REGULAR:
        out = regular(n, degree, seed)
    else:
        out = check_links(n, links)
    parts = _components(n, out)
    if parts != 1:
        raise ConfigError(f"topology: the gossip graph falls apart into {parts} components; "
                          "its nodes could never agree on one model")
    return out


def mixing_matrix(n: int, links: Links, kind: Mixing = Mixing.METROPOLIS) -> torch.Tensor:
    """The symmetric, doubly stochastic ``n x n`` mixing matrix (float64)."""
    degree = [0] * n
    for a, b in links:
        degree[a] += 1
        degree[b] += 1
    w = torch.zeros(n, n, dtype=torch.float64)
    top = max(degree)
    for a, b in links:
        weight = 1.0 / (1 + (max(degree[a], degree[b]) if kind == Mixing.METROPOLIS else top))
        w[a, b] = w[b, a] = weight
    w += torch.diag(1.0 - w.sum(dim=1))
    return w


class GossipLoop:
    """``rounds`` of local training and neighbour mixing over every client (see the module)."""

    def __init__(self, *, links: Links, mixing: torch.Tensor, fleet: Fleet,
                 evaluate: EvaluateFn, client: ClientConfig, rounds: int, layout: ParamLayout,
                 initial_params: torch.Tensor, eval_every: int = 1,
                 threads: int | None = None, sinks: Sequence[Sink] = (),
                 checkpointer: Checkpointer | None = None) -> None:
        self.links, self.mixing, self.fleet, self.evaluate = links, mixing, fleet, evaluate
        self.client, self.rounds, self.layout = client, rounds, layout
        self.eval_every, self.threads, self.sinks = eval_every, threads, list(sinks)
        self.checkpointer = checkpointer
        n = mixing.shape[0]
        models = initial_params.expand(n, -1).clone()
        self.state = ServerState(round=0, params=initial_params.clone(),
                                 extras={"models": models})
        self.rows: list[Row] = []

    def run(self) -> History:
        start = len(self.rows)
        with torch_threads(self.threads):
            try:
                for t in range(self.state.round + 1, self.rounds + 1):
                    self.state, row = self.run_round(t, self.state)
                    record(row, last=self.rounds, rows=self.rows, sinks=self.sinks,
                           checkpointer=self.checkpointer, snapshot=self.snapshot)
            finally:
                self.fleet.close()
        return History(rows=tuple(self.rows[start:]), final=self.state, layout=self.layout)

    def run_round(self, t: int, state: ServerState) -> tuple[ServerState, Row]:
        start = time.perf_counter()
        models = state.extras["models"]
        tasks = [Downlink(round=t, client_id=i, params=models[i], config=self.client)
                 for i in range(models.shape[0])]
        trained = models.clone()
        results: list[ClientResult] = []
        for o in self.fleet.fit(t, tasks):
            o = checked(o, self.layout.size)
            if isinstance(o, ClientResult):  # a node that failed keeps its model
                trained[o.client_id] = o.params
                results.append(o)
        fit_done = time.perf_counter()
        mixed = (self.mixing @ trained.double()).to(models.dtype)
        mean = mixed.mean(dim=0)
        consensus = float((mixed - mean).double().square().sum(dim=1).mean())
        new = ServerState(round=t, params=mean, extras={"models": mixed})
        train = combine(r.metrics for r in results)
        itemsize = models.element_size() * models.shape[1]
        row: Row = {"round": t, "num_results": len(results),
                    "num_failures": len(tasks) - len(results),
                    "train_loss": train["train_loss"].value if "train_loss" in train else None,
                    "consensus_distance": consensus,
                    "bytes_exchanged": 2 * len(self.links) * itemsize}
        if t % self.eval_every == 0 or t == self.rounds:
            row.update(self.evaluate(mean))
        else:
            row["test_loss"] = row["test_accuracy"] = None
        end = time.perf_counter()
        row.update(fit_seconds=fit_done - start, aggregate_seconds=0.0,
                   eval_seconds=end - fit_done, round_seconds=end - start)
        return new, row

    def snapshot(self) -> Checkpoint:
        return Checkpoint(state=self.state, rows=tuple(self.rows))

    def restore(self, ckpt: Checkpoint, directory: Path) -> None:
        check_resumable(ckpt, self.state, directory)
        self.state = ckpt.state
        self.rows = _rows_up_to(ckpt.rows, ckpt.state.round)
