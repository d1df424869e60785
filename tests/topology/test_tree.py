"""A hierarchy from its YAML: clients placed under the leaves, problems named."""

from __future__ import annotations

import pytest

from fedloom.app.config import load_config
from fedloom.core.errors import ConfigError
from fedloom.topology.config import Deal, NodeConfig, TopologyConfig
from fedloom.topology.tree import build_tree

NODES = "topology.nodes=[{name: cloud}, {name: e0, rounds: 2, cohort: 2}, {name: e1}]"
EDGES = "topology.edges=[[e0, cloud], [e1, cloud]]"


def tree_of(*overrides: str, clients: int = 7) -> object:
    cfg = load_config(None, [NODES, EDGES, *overrides]).topology
    assert cfg is not None
    return build_tree(cfg, num_clients=clients, seed=0)


def test_the_yaml_form_parses_into_typed_nodes_and_edges() -> None:
    nodes = ("topology.nodes=[{name: cloud}, {name: e0, rounds: 2, cohort: 2, algorithm: "
             "{name: fedprox, mu: 0.5}}, {name: e1}]")
    cfg = load_config(None, [nodes, EDGES, "topology.clients={e1: [5, 6]}"]).topology
    assert cfg is not None
    assert cfg.nodes[1] == NodeConfig(name="e0", rounds=2, cohort=2,
                                      algorithm=cfg.nodes[1].algorithm)
    assert cfg.nodes[1].algorithm is not None and cfg.nodes[1].algorithm.name == "fedprox"
    assert cfg.nodes[1].algorithm.options.mu == 0.5
    assert cfg.edges == (("e0", "cloud"), ("e1", "cloud"))
    assert cfg.clients == {"e1": (5, 6)}


@pytest.mark.parametrize(("rule", "expected"), [
    (Deal.CONTIGUOUS, {"e0": (0, 1, 2, 3), "e1": (4, 5, 6)}),
    (Deal.ROUND_ROBIN, {"e0": (0, 2, 4, 6), "e1": (1, 3, 5)}),
])
def test_clients_are_dealt_over_the_leaves(rule: Deal, expected: dict[str, tuple[int, ...]]
                                           ) -> None:
    tree = tree_of(f"topology.deal={rule.value}")
    assert tree.root == "cloud"  # type: ignore[attr-defined]
    got = {n.name: n.clients for n in tree.leaves()}  # type: ignore[attr-defined]
    assert got == expected
    assert tree.clients_below("cloud") == list(range(7))  # type: ignore[attr-defined]


def test_a_random_deal_is_seeded_and_covers_every_client() -> None:
    a, b = tree_of("topology.deal=random"), tree_of("topology.deal=random")
    leaves = {n.name: n.clients for n in a.leaves()}  # type: ignore[attr-defined]
    assert leaves == {n.name: n.clients for n in b.leaves()}  # type: ignore[attr-defined]
    assert sorted(c for ids in leaves.values() for c in ids) == list(range(7))


def test_explicit_lists_win_and_the_rest_is_dealt() -> None:
    tree = tree_of("topology.clients={e1: [0, 6]}")
    got = {n.name: n.clients for n in tree.leaves()}  # type: ignore[attr-defined]
    assert got == {"e0": (1, 2, 3, 4, 5), "e1": (0, 6)}


@pytest.mark.parametrize(("overrides", "message"), [
    (["topology.clients={e1: [0, 9]}"],
     r"client\(s\) \[9\] are not in \[0, data.num_clients = 7\)"),
    (["topology.clients={e0: [1], e1: [1]}"], "client 1 is listed under both 'e0' and 'e1'"),
    (["topology.clients={cloud: [1]}"], "'cloud' has aggregators below it"),
    (["topology.clients={ghost: [1]}"], "'ghost' is not a node of the topology"),
    (["topology.clients={e0: [1]}", "topology.nodes=[{name: cloud}, {name: e0}, {name: e1}]"],
     None),
])
def test_bad_client_lists_are_named(overrides: list[str], message: str | None) -> None:
    if message is None:  # e0 listed, e1 dealt the other six: fine
        tree_of(*overrides)
        return
    with pytest.raises(ConfigError, match=message):
        tree_of(*overrides)


def test_two_roots_and_empty_leaves_are_refused() -> None:
    two = TopologyConfig(nodes=(NodeConfig(name="a"), NodeConfig(name="b"),
                                NodeConfig(name="c")), edges=(("c", "a"), ("b", "a")))
    build_tree(two, num_clients=2, seed=0)
    apart = TopologyConfig(nodes=(NodeConfig(name="a"), NodeConfig(name="b"),
                                  NodeConfig(name="c"), NodeConfig(name="d")),
                           edges=(("c", "a"), ("d", "b")))
    with pytest.raises(ConfigError, match="one root, but 'a', 'b' report to no aggregator"):
        build_tree(apart, num_clients=4, seed=0)
    with pytest.raises(ConfigError, match=r"aggregator\(s\) 'c' have no collaborators"):
        build_tree(two, num_clients=1, seed=0)


def test_an_override_that_cannot_merge_is_a_named_config_error() -> None:
    with pytest.raises(ConfigError, match=r"topology.nodes\[1\].algorithm = .*cannot apply"):
        load_config(None, [NODES, EDGES, "topology.nodes[1].algorithm={name: fedprox}"])


def test_bad_node_options_are_reported_with_their_keys() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["topology.nodes=[{name: cloud, rounds: 0, cohort: -1}]"])
    text = str(info.value)
    assert "topology.nodes[0].rounds = 0: must be >= 1" in text
    assert "topology.nodes[0].cohort = -1" in text
    with pytest.raises(ConfigError, match=r"topology.edges\[0\] = \['a'\]: must be a list of 2"):
        load_config(None, ["topology.nodes=[{name: a}]", "topology.edges=[[a]]"])
