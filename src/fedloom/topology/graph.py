"""Topologies as data: nodes, directed edges (collaborator -> aggregator), federated groups.

A :class:`Topology` is OpenFed's model: every edge says "this collaborator reports to that
aggregator". :func:`analysis` turns it into the federated groups a node belongs to, with its
role in each: a node can aggregate one group and collaborate in another, which is hierarchical
FL. :meth:`Topology.check` refuses what cannot run, naming the nodes involved: a cycle, an edge
naming an unknown node, a collaborator with two aggregators in one tree, a node that is neither
an aggregator nor a collaborator, duplicate names.

Example:
    >>> topo = Topology()
    >>> cloud, edge = topo.add_node("cloud"), topo.add_node("edge0")
    >>> topo.add_edge(edge, cloud)
    >>> [(g.aggregator.name, g.role.value) for g in analysis(topo, edge)]
    [('edge0', 'aggregator'), ('cloud', 'collaborator')]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from fedloom.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Address:
    """OpenFed's address of a federated group: fedloom reads ``tcp://HOST:PORT`` from
    ``init_method`` (its gRPC server listens there); ``backend``, ``world_size`` and ``rank``
    are kept for OpenFed code that reads them."""

    backend: str = "gloo"
    init_method: str = "tcp://localhost:1994"
    world_size: int = 2
    rank: int = -1

    @property
    def host_port(self) -> str | None:
        """``HOST:PORT`` of a ``tcp://`` address (None for ``null``)."""
        if not self.init_method.startswith("tcp://"):
            return None
        return self.init_method.removeprefix("tcp://")


#: OpenFed's names for an aggregator's usual address and a collaborator's (it listens nowhere)
default_tcp_address = Address()
empty_address = Address(backend="null", init_method="null")


@dataclass(frozen=True, slots=True)
class Node:
    """A participant: its unique name and, in a deployment, the address it listens on
    (``HOST:PORT``, or an OpenFed :class:`Address`)."""

    name: str
    address: str | Address | None = None

    @property
    def nick_name(self) -> str:
        """OpenFed's name for :attr:`name`."""
        return self.name

    @property
    def host_port(self) -> str | None:
        if isinstance(self.address, Address):
            return self.address.host_port
        return self.address


@dataclass(frozen=True, slots=True)
class Edge:
    """``start`` (the collaborator) reports to ``end`` (the aggregator), as in OpenFed."""

    start: Node
    end: Node


class Role(StrEnum):
    AGGREGATOR = "aggregator"
    COLLABORATOR = "collaborator"


@dataclass(frozen=True, slots=True)
class FederatedGroup:
    """An aggregator with its collaborators, seen from one member (``role``, ``nick_name``):
    what OpenFed's ``analysis`` returns as federated properties."""

    aggregator: Node
    collaborators: tuple[Node, ...]
    role: Role
    nick_name: str = ""

    @property
    def address(self) -> str | Address | None:
        """Where the group meets: its aggregator's address."""
        return self.aggregator.address

    def rank_of(self, name: str) -> int:
        """OpenFed's rank in the group: 0 the aggregator, collaborators 1.. by sorted name."""
        if name == self.aggregator.name:
            return 0
        return sorted(n.name for n in self.collaborators).index(name) + 1

    @property
    def is_aggregator(self) -> bool:
        return self.role == Role.AGGREGATOR

    @property
    def is_collaborator(self) -> bool:
        return self.role == Role.COLLABORATOR


class Topology:
    """Nodes and collaborator -> aggregator edges."""

    def __init__(self, nodes: Iterable[Node] = (), edges: Iterable[Edge] = ()) -> None:
        self._nodes: dict[str, Node] = {}
        self._edges: list[tuple[str, str]] = []
        self.add_node_list(list(nodes))
        for edge in edges:
            self.add_edge(edge)

    @property
    def nodes(self) -> list[Node]:
        return list(self._nodes.values())

    @property
    def edges(self) -> list[tuple[Node, Node]]:
        """(collaborator, aggregator) pairs, in the order added."""
        return [(self._nodes[c], self._nodes[a]) for c, a in self._edges]

    def add_node(self, node: Node | str, address: str | None = None) -> Node:
        """Add a node (a name and address, or a :class:`Node`); names are unique."""
        node = node if isinstance(node, Node) else Node(node, address)
        if node.name in self._nodes:
            raise ConfigError(f"topology: node {node.name!r} is added twice (names are unique)")
        self._nodes[node.name] = node
        return node

    def add_node_list(self, nodes: Sequence[Node]) -> None:
        """Add every node of ``nodes`` (OpenFed's name)."""
        for node in nodes:
            self.add_node(node)

    def fetch_node_via_nick_name(self, name: str) -> Node | None:
        """The node called ``name``, or None (OpenFed's name)."""
        return self._nodes.get(name)

    def add_edge(self, collaborator: Node | str | Edge,
                 aggregator: Node | str | None = None) -> None:
        """``collaborator`` reports to ``aggregator`` (or an OpenFed :class:`Edge`)."""
        if isinstance(collaborator, Edge):
            edge = collaborator
            collaborator, aggregator = edge.start, edge.end
        if aggregator is None:
            raise ConfigError("topology: add_edge needs an aggregator (or an Edge)")
        c, a = _name(collaborator), _name(aggregator)
        unknown = [n for n in (c, a) if n not in self._nodes]
        if unknown:
            raise ConfigError(f"topology: the edge {c} -> {a} names unknown node(s) "
                              f"{', '.join(map(repr, unknown))}")
        if c == a:
            raise ConfigError(f"topology: node {c!r} cannot report to itself")
        if (c, a) in self._edges:
            raise ConfigError(f"topology: the edge {c} -> {a} is added twice")
        self._edges.append((c, a))

    def aggregators_of(self, node: Node | str) -> list[Node]:
        name = _name(node)
        return [self._nodes[a] for c, a in self._edges if c == name]

    def collaborators_of(self, node: Node | str) -> list[Node]:
        name = _name(node)
        return [self._nodes[c] for c, a in self._edges if a == name]

    def roots(self) -> list[Node]:
        """Nodes that report to nobody."""
        return [n for n in self.nodes if not self.aggregators_of(n)]

    def check(self) -> None:
        """Raise a ConfigError naming the nodes of the first problem found."""
        lonely = [n.name for n in self.nodes
                  if not self.aggregators_of(n) and not self.collaborators_of(n)]
        if lonely and len(self._nodes) > 1:
            raise ConfigError(f"topology: node(s) {', '.join(map(repr, lonely))} have no "
                              "collaborators and report to no aggregator")
        cycle = self._cycle()
        if cycle:
            raise ConfigError(f"topology: {' -> '.join(cycle)} is a cycle (none of its nodes "
                              "reaches a root)")
        for node in self.nodes:
            above = self.aggregators_of(node)
            for i, a in enumerate(above):
                for b in above[i + 1:]:
                    shared = set(self.root_names(a)) & set(self.root_names(b))
                    if shared:
                        raise ConfigError(
                            f"topology: {node.name!r} reports to both {a.name!r} and "
                            f"{b.name!r}, which lead to the same root {sorted(shared)[0]!r}: a "
                            "collaborator has one aggregator per tree")

    def root_names(self, node: Node | str) -> list[str]:
        """The roots ``node`` leads to (itself when it is one)."""
        above = self.aggregators_of(node)
        if not above:
            return [_name(node)]
        return sorted({r for a in above for r in self.root_names(a)})

    def _cycle(self) -> list[str]:
        """A cycle as a list of names (first repeated last), or []."""
        colour: dict[str, int] = {}
        path: list[str] = []

        def visit(name: str) -> list[str]:
            colour[name] = 1
            path.append(name)
            for up in self.aggregators_of(name):
                if colour.get(up.name) == 1:
                    return [*path[path.index(up.name):], up.name]
                if up.name not in colour:
                    found = visit(up.name)
                    if found:
                        return found
            path.pop()
            colour[name] = 2
            return []

        for name in self._nodes:
            if name not in colour:
                found = visit(name)
                if found:
                    return found
        return []


def analysis(topology: Topology, node: Node | str) -> list[FederatedGroup]:
    """The federated groups ``node`` belongs to: the one it aggregates (if it has
    collaborators), then each it collaborates in, with its role in each."""
    topology.check()
    name = _name(node)
    if name not in {n.name for n in topology.nodes}:
        raise ConfigError(f"topology: node {name!r} is not in the topology")
    me = next(n for n in topology.nodes if n.name == name)
    groups: list[FederatedGroup] = []
    below = topology.collaborators_of(me)
    if below:
        groups.append(FederatedGroup(me, tuple(below), Role.AGGREGATOR, name))
    for up in topology.aggregators_of(me):
        groups.append(FederatedGroup(up, tuple(topology.collaborators_of(up)),
                                     Role.COLLABORATOR, name))
    return groups


def deal(client_ids: Sequence[int], leaves: Sequence[str], order: Iterable[int] | None = None
         ) -> dict[str, list[int]]:
    """``client_ids`` in equal consecutive blocks over ``leaves`` (in that order), taken in
    ``order`` (default: as given); the first leaves get one more when it does not divide."""
    ids = list(order) if order is not None else list(client_ids)
    q, r = divmod(len(ids), len(leaves))
    out: dict[str, list[int]] = {}
    start = 0
    for i, leaf in enumerate(leaves):
        size = q + (i < r)
        out[leaf] = sorted(ids[start:start + size])
        start += size
    return out


def _name(node: Node | str) -> str:
    return node.name if isinstance(node, Node) else node
