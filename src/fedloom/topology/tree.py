"""A hierarchy from its config: one root, aggregators below it, the run's clients under the
leaves (listed, or dealt by a rule), checked before anything runs.

Every problem names the nodes involved: more than one root, a node with both aggregators and
clients below it, a leaf without clients, a client listed twice or out of range, an explicit
list for a node that is not a leaf.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedloom.core.errors import ConfigError
from fedloom.core.rng import SERVER, numpy_generator
from fedloom.topology.config import Deal, NodeConfig, TopologyConfig, TopologyKind
from fedloom.topology.graph import Topology, deal

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class TreeNode:
    """An aggregator of the hierarchy: its config, and what is below it (aggregators by name,
    or the run's clients by id; never both)."""

    config: NodeConfig
    children: tuple[str, ...] = ()
    clients: tuple[int, ...] = ()
    depth: int = 0

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def is_leaf(self) -> bool:
        return not self.children


@dataclass(frozen=True, slots=True, kw_only=True)
class Tree:
    """The checked hierarchy: ``nodes`` by name, ``root`` the one that reports to nobody."""

    root: str
    nodes: dict[str, TreeNode]

    def leaves(self) -> list[TreeNode]:
        return [n for n in self.nodes.values() if n.is_leaf]

    def clients_below(self, name: str) -> list[int]:
        """Every client under ``name``, sorted."""
        node = self.nodes[name]
        if node.is_leaf:
            return sorted(node.clients)
        return sorted(c for child in node.children for c in self.clients_below(child))

    def topology(self) -> Topology:
        """The aggregators as a :class:`Topology` (clients left out)."""
        topo = Topology()
        for node in self.nodes.values():
            topo.add_node(node.name, node.config.address)
        for node in self.nodes.values():
            for child in node.children:
                topo.add_edge(child, node.name)
        return topo


def build_tree(cfg: TopologyConfig, *, num_clients: int, seed: int) -> Tree:
    """Check ``cfg`` (a hierarchy) and place the run's ``num_clients`` clients in it."""
    if cfg.kind != TopologyKind.HIERARCHY:
        raise ConfigError(f"topology.kind = {cfg.kind.value!r}: not a hierarchy")
    topo = Topology()
    for node in cfg.nodes:
        topo.add_node(node.name, node.address)
    for collaborator, aggregator in cfg.edges:
        topo.add_edge(collaborator, aggregator)
    topo.check()
    roots = topo.roots()
    if len(roots) != 1:
        names = ", ".join(repr(r.name) for r in roots)
        raise ConfigError(f"topology: a hierarchy has one root, but {names} report to no "
                          "aggregator")
    placed = _place_clients(cfg, topo, num_clients, seed)
    configs = {n.name: n for n in cfg.nodes}
    nodes: dict[str, TreeNode] = {}

    def add(name: str, depth: int) -> None:
        children = tuple(n.name for n in topo.collaborators_of(name))
        nodes[name] = TreeNode(config=configs[name], children=children,
                               clients=tuple(placed.get(name, ())), depth=depth)
        for child in children:
            add(child, depth + 1)

    add(roots[0].name, 0)
    return Tree(root=roots[0].name, nodes=nodes)


def _place_clients(cfg: TopologyConfig, topo: Topology, num_clients: int,
                   seed: int) -> dict[str, list[int]]:
    leaves = [n.name for n in topo.nodes if not topo.collaborators_of(n)]
    explicit = {name: list(ids) for name, ids in cfg.clients.items()}
    for name, ids in explicit.items():
        if name not in {n.name for n in topo.nodes}:
            raise ConfigError(f"topology.clients: {name!r} is not a node of the topology")
        if name not in leaves:
            raise ConfigError(f"topology.clients.{name}: {name!r} has aggregators below it; "
                              "clients hang under leaf aggregators only")
        bad = [c for c in ids if not 0 <= c < num_clients]
        if bad:
            raise ConfigError(f"topology.clients.{name}: client(s) {bad[:5]} are not in "
                              f"[0, data.num_clients = {num_clients})")
    listed: dict[int, str] = {}
    for name, ids in explicit.items():
        for c in ids:
            if c in listed:
                raise ConfigError(f"topology.clients: client {c} is listed under both "
                                  f"{listed[c]!r} and {name!r}")
            listed[c] = name
    rest = [c for c in range(num_clients) if c not in listed]
    dealt_to = [leaf for leaf in leaves if leaf not in explicit]
    placed = dict(explicit)
    if dealt_to:
        placed.update(deal(rest, dealt_to, _order(cfg.deal, rest, len(dealt_to), seed)))
    elif rest:
        log.warning("topology: %d client(s) are listed under no aggregator and take no part",
                    len(rest))
    empty = [leaf for leaf in leaves if not placed.get(leaf)]
    if empty:
        raise ConfigError(f"topology: aggregator(s) {', '.join(map(repr, empty))} have no "
                          f"collaborators (no clients left to deal: data.num_clients = "
                          f"{num_clients})")
    return placed


def _order(rule: Deal, ids: Sequence[int], leaves: int, seed: int) -> list[int]:
    if rule == Deal.ROUND_ROBIN:  # client i to leaf i mod L: blocks of the interleaved order
        return [c for offset in range(leaves) for c in ids[offset::leaves]]
    if rule == Deal.RANDOM:
        perm = numpy_generator(seed, 0, SERVER, "topology").permutation(len(ids))
        return [ids[i] for i in np.asarray(perm).tolist()]
    return list(ids)
