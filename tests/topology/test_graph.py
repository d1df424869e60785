"""Topologies as data: nodes, collaborator -> aggregator edges, groups, and bad topologies."""

from __future__ import annotations

import pytest

from fedloom.core.errors import ConfigError
from fedloom.topology.graph import Node, Role, Topology, analysis, deal


def three_tier() -> Topology:
    topo = Topology()
    for name in ("cloud", "edge0", "edge1", "a", "b", "c"):
        topo.add_node(name, f"127.0.0.1:{8000 + len(topo.nodes)}")
    for c, a in (("edge0", "cloud"), ("edge1", "cloud"), ("a", "edge0"), ("b", "edge0"),
                 ("c", "edge1")):
        topo.add_edge(c, a)
    return topo


def test_a_node_aggregates_one_group_and_collaborates_in_another() -> None:
    topo = three_tier()
    topo.check()
    groups = analysis(topo, "edge0")
    assert [(g.aggregator.name, g.role) for g in groups] == [("edge0", Role.AGGREGATOR),
                                                            ("cloud", Role.COLLABORATOR)]
    assert [n.name for n in groups[0].collaborators] == ["a", "b"]
    assert [n.name for n in groups[1].collaborators] == ["edge0", "edge1"]
    assert groups[0].is_aggregator and groups[1].is_collaborator
    assert [g.role for g in analysis(topo, "cloud")] == [Role.AGGREGATOR]
    assert [(g.aggregator.name, g.role) for g in analysis(topo, Node("c"))] == \
        [("edge1", Role.COLLABORATOR)]
    assert [r.name for r in topo.roots()] == ["cloud"]
    assert topo.nodes[0].address == "127.0.0.1:8000"


def test_a_collaborator_may_serve_two_separate_federations() -> None:
    topo = Topology()
    for name in ("x", "y", "shared"):
        topo.add_node(name)
    topo.add_edge("shared", "x")
    topo.add_edge("shared", "y")
    topo.check()  # two roots, two trees: allowed
    assert [g.aggregator.name for g in analysis(topo, "shared")] == ["x", "y"]


@pytest.mark.parametrize(("build", "message"), [
    (lambda t: t.add_node("edge0"), "node 'edge0' is added twice"),
    (lambda t: t.add_edge("a", "nowhere"), "names unknown node(s) 'nowhere'"),
    (lambda t: t.add_edge("a", "a"), "cannot report to itself"),
    (lambda t: t.add_edge("a", "edge0"), "the edge a -> edge0 is added twice"),
])
def test_bad_additions_name_the_nodes(build: object, message: str) -> None:
    topo = three_tier()
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(topo)  # type: ignore[operator]


def test_a_cycle_is_refused_naming_its_nodes() -> None:
    topo = three_tier()
    topo.add_edge("cloud", "a")
    with pytest.raises(ConfigError, match=r"(cloud -> a -> edge0 -> cloud|"
                                          r"a -> edge0 -> cloud -> a) is a cycle"):
        topo.check()


def test_two_aggregators_in_one_tree_are_refused() -> None:
    topo = three_tier()
    topo.add_edge("a", "edge1")
    with pytest.raises(ConfigError, match="'a' reports to both 'edge0' and 'edge1', which lead "
                                          "to the same root 'cloud'"):
        topo.check()


def test_a_node_with_no_links_is_refused() -> None:
    topo = three_tier()
    topo.add_node("orphan")
    with pytest.raises(ConfigError, match="'orphan' have no collaborators and report to no "
                                          "aggregator"):
        topo.check()
    with pytest.raises(ConfigError, match="'ghost' is not in the topology"):
        analysis(three_tier(), "ghost")


def test_dealing_gives_consecutive_blocks_first_leaves_one_more() -> None:
    assert deal(list(range(7)), ["x", "y", "z"]) == {"x": [0, 1, 2], "y": [3, 4], "z": [5, 6]}
    assert deal([9, 8, 7, 6], ["x", "y"], order=[6, 9, 7, 8]) == {"x": [6, 9], "y": [7, 8]}
