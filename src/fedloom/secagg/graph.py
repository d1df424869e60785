"""The round's setup: who masks with whom (the SecAgg+ neighbour graph) and the numbers.

SecAgg+ (Bell et al. 2020) replaces SecAgg's complete graph by a random ``k``-regular one:
the cohort is put on a ring in a random order (seeded by ``(seed, round)``) and each client is
joined to the ``k / 2`` clients on either side. A client masks its input with its neighbours
only and shares its secrets among them, so its work and traffic grow with ``k``, not with the
cohort. With ``k >= n - 1`` (or no ``k``) the graph is complete: the original protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedloom.core.errors import ConfigError
from fedloom.core.rng import derive_seed
from fedloom.secagg.config import Quantizer, SecAggConfig

GRAPH_PURPOSE = "secagg_graph"


def neighbour_graph(cohort: Sequence[int], degree: int | None, *, seed: int,
                    round: int) -> dict[int, tuple[int, ...]]:
    """Each client's neighbours (sorted), a symmetric ``degree``-regular graph."""
    ids = sorted(cohort)
    n = len(ids)
    if degree is None or degree >= n - 1:
        return {c: tuple(x for x in ids if x != c) for c in ids}
    rng = np.random.default_rng(derive_seed(seed, round, -1, GRAPH_PURPOSE))
    order = [ids[i] for i in rng.permutation(n)]
    graph: dict[int, set[int]] = {c: set() for c in ids}
    for pos, c in enumerate(order):
        for step in range(1, degree // 2 + 1):
            other = order[(pos + step) % n]
            graph[c].add(other)
            graph[other].add(c)
    return {c: tuple(sorted(v)) for c, v in graph.items()}


def majority(holders: int) -> int:
    return holders // 2 + 1


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundSetup:
    """What one round of the protocol runs with.

    Attributes:
        round: the round (bound into every ciphertext and derived key).
        graph: each cohort client's neighbours.
        threshold: shares needed to rebuild a secret; the fewest clients a stage may end with.
        quantizer: the fixed-point encoding.
        size: ring elements per input (the update's values plus the example count).
    """

    round: int
    graph: Mapping[int, tuple[int, ...]]
    threshold: int
    quantizer: Quantizer
    size: int

    @classmethod
    def make(cls, cfg: SecAggConfig, *, cohort: Sequence[int], round: int, seed: int,
             update_size: int) -> RoundSetup:
        graph = neighbour_graph(cohort, cfg.neighbours, seed=seed, round=round)
        holders = 1 + min((len(v) for v in graph.values()), default=0)
        threshold = majority(holders) if cfg.threshold is None else cfg.threshold
        if not majority(holders) <= threshold <= holders or threshold < 2:
            raise ConfigError(
                f"secagg.threshold = {threshold}: with a cohort of {len(graph)} and "
                f"neighbours = {cfg.neighbours} each secret has {holders} holders; the "
                f"threshold must be in [{max(2, majority(holders))}, {holders}]")
        return cls(round=round, graph=graph, threshold=threshold,
                   quantizer=Quantizer.of(cfg), size=update_size + 1)

    @property
    def cohort(self) -> list[int]:
        return sorted(self.graph)


__all__ = ["RoundSetup", "majority", "neighbour_graph"]
