"""The ``topology`` section of a run config.

A hierarchy (``kind: hierarchy``) names its aggregators and the edges between them
(collaborator -> aggregator); the run's clients hang under the leaf aggregators, listed
explicitly (``clients``) or dealt by a rule (``deal``)::

    topology:
      nodes:
        - {name: cloud}                                      # the root: the run's algorithm
        - {name: edge0, rounds: 2, algorithm: {name: fedavg}}
        - {name: edge1, rounds: 2, algorithm: {name: fedavg}}
      edges: [[edge0, cloud], [edge1, cloud]]
      deal: contiguous              # data.num_clients clients dealt over edge0, edge1
      clients: {edge1: [7, 8, 9]}   # or listed (explicit lists win for their aggregator)

A graph without a root (``kind: gossip``) makes every client a node that trains and then mixes
with its neighbours::

    topology: {kind: gossip, graph: ring}        # ring | torus | regular | links
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from fedloom.algorithms.registry import AlgorithmConfig
from fedloom.core.validate import Problems


class TopologyKind(StrEnum):
    HIERARCHY = "hierarchy"  # clients -> aggregators -> ... -> a root
    GOSSIP = "gossip"  # no root: neighbours mix their models (D-PSGD)


class Deal(StrEnum):
    """How the run's clients are dealt over the leaf aggregators not given an explicit list."""

    CONTIGUOUS = "contiguous"  # equal consecutive blocks of client ids, in node order
    ROUND_ROBIN = "round_robin"  # client i to leaf i mod L
    RANDOM = "random"  # a seeded permutation, then equal blocks


class GraphKind(StrEnum):
    RING = "ring"  # each node with its two neighbours
    TORUS = "torus"  # a rows x (n / rows) grid, wrapped
    REGULAR = "regular"  # a random ``degree``-regular graph (seeded)
    LINKS = "links"  # the pairs listed in ``links``


class Mixing(StrEnum):
    METROPOLIS = "metropolis"  # Metropolis-Hastings: 1 / (1 + max(deg_i, deg_j)) per edge
    MAX_DEGREE = "max_degree"  # 1 / (1 + max degree) per edge


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """One aggregator of a hierarchy.

    Attributes:
        name: unique among the nodes.
        address: where it listens in a deployment (``HOST:PORT``).
        rounds: rounds it runs with its collaborators each time its parent asks (the root's
            rounds are the run's ``rounds``).
        cohort: collaborators per round (None: all of them; the root: ``cohort.size`` when the
            run's clients are its collaborators, else all).
        algorithm: how it aggregates (None: the run's ``algorithm``).
        min_success: usable collaborator results a round needs (None: every one asked).
    """

    name: str
    address: str | None = None
    rounds: int = 1
    cohort: int | None = None
    algorithm: AlgorithmConfig | None = None
    min_success: int | None = None

    def __post_init__(self) -> None:
        p = Problems()
        p.check(bool(self.name) and "/" not in self.name, "name", self.name,
                "must be a non-empty name without '/'")
        p.check(self.rounds >= 1, "rounds", self.rounds, "must be >= 1")
        p.check(self.cohort is None or self.cohort >= 1, "cohort", self.cohort,
                "must be >= 1 or null (all collaborators)")
        p.check(self.min_success is None or self.min_success >= 1, "min_success",
                self.min_success, "must be >= 1 or null (all asked)")
        p.raise_if_any()


@dataclass(frozen=True, slots=True, kw_only=True)
class TopologyConfig:
    """The ``topology`` section (see the module docstring).

    Attributes:
        kind: a hierarchy of aggregators, or gossip between the clients.
        nodes, edges, clients, deal: a hierarchy's aggregators, its collaborator -> aggregator
            edges, explicit client lists per leaf aggregator, and the rule for the others.
        graph, degree, rows, links, mixing: gossip's neighbour graph and mixing weights.
    """

    kind: TopologyKind = TopologyKind.HIERARCHY
    nodes: tuple[NodeConfig, ...] = ()
    edges: tuple[tuple[str, str], ...] = ()
    clients: dict[str, tuple[int, ...]] = field(default_factory=dict)
    deal: Deal = Deal.CONTIGUOUS
    graph: GraphKind = GraphKind.RING
    degree: int = 4
    rows: int | None = None
    links: tuple[tuple[int, int], ...] = ()
    mixing: Mixing = Mixing.METROPOLIS

    def __post_init__(self) -> None:
        p = Problems()
        hierarchy = self.kind == TopologyKind.HIERARCHY
        p.check(not hierarchy or len(self.nodes) >= 1, "nodes", len(self.nodes),
                "a hierarchy needs at least one node (its root)")
        p.check(self.degree >= 1, "degree", self.degree, "must be >= 1")
        p.check(self.rows is None or self.rows >= 1, "rows", self.rows, "must be >= 1")
        p.check(self.graph != GraphKind.LINKS or bool(self.links) or hierarchy, "links",
                list(self.links), "graph: links needs the list of links ([[0, 1], ...])")
        p.raise_if_any()
