"""Decentralized gossip (D-PSGD): graphs, doubly stochastic mixing, a closed form on
quadratics, every fleet."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.algorithms.base import PLAIN
from fedloom.algorithms.fedavg import FedAvg
from fedloom.app.build import build_run
from fedloom.app.config import load_config
from fedloom.core.errors import ConfigError
from fedloom.core.packages import ClientConfig
from fedloom.runtime.assemble import assemble
from fedloom.topology.config import GraphKind, Mixing
from fedloom.topology.gossip import (
    GossipLoop,
    check_links,
    graph_links,
    mixing_matrix,
    regular,
    ring,
    torus,
)
from tests.algorithms.quadratic import Point, half_squared, quadratic_data


def degrees(n: int, links: list[tuple[int, int]]) -> list[int]:
    out = [0] * n
    for a, b in links:
        out[a] += 1
        out[b] += 1
    return out


def test_the_standard_graphs() -> None:
    assert ring(5) == [(0, 1), (0, 4), (1, 2), (2, 3), (3, 4)]
    assert degrees(12, torus(12, 3)) == [4] * 12  # 3 x 4 wrapped both ways
    a, b = regular(10, 3, seed=4), regular(10, 3, seed=4)
    assert a == b and degrees(10, a) == [3] * 10 and a != regular(10, 3, seed=5)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: ring(2), "needs at least 3 nodes"),
    (lambda: torus(10, 3), "rows = 3: a torus of 10 nodes"),
    (lambda: regular(5, 3, seed=0), "nodes \\* degree even"),
    (lambda: check_links(4, [(0, 4)]), "the link \\[0, 4\\] names a node outside"),
    (lambda: check_links(4, [(2, 2)]), "node 2 is linked to itself"),
    (lambda: graph_links(GraphKind.LINKS, 4, links=[(0, 1), (2, 3)]), "falls apart into 2"),
])
def test_bad_graphs_are_named(make: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()  # type: ignore[operator]


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12).flatmap(lambda n: st.tuples(st.just(n), st.sets(
    st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda p: p[0] < p[1]),
    min_size=1))), st.sampled_from(list(Mixing)))
def test_mixing_is_symmetric_doubly_stochastic_and_nonnegative(
        graph: tuple[int, set[tuple[int, int]]], kind: Mixing) -> None:
    n, links = graph
    w = mixing_matrix(n, sorted(links), kind)
    assert torch.equal(w, w.T)
    assert torch.allclose(w.sum(0), torch.ones(n, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(w.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-12)
    assert bool((w >= 0).all())
    for a, b in links:
        assert w[a, b] > 0  # only neighbours mix
    assert int((w > 0).sum()) == n + 2 * len(links) - int((w.diagonal() == 0).sum())


COUNTS = (2, 1, 3, 2, 1, 2)
TAU = 3


def gossip_quadratic(eta: float, rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes 1/2 ||x - e_i||^2 on a ring, TAU exact gradient steps, then mixing; the nodes'
    models and the mixing matrix."""
    data = quadratic_data(COUNTS)
    links = ring(len(COUNTS))
    w = mixing_matrix(len(COUNTS), links)
    parts = assemble(data=data, model_fn=lambda: Point(len(COUNTS)), algorithm=FedAvg(),
                     loss_fn=half_squared, reducible=False)
    assert parts.spec.local == PLAIN
    loop = GossipLoop(links=links, mixing=w, fleet=parts.fleet, evaluate=lambda p: {},
                      client=ClientConfig(steps=TAU, batch_size=0, lr=eta), rounds=rounds,
                      layout=parts.layout, initial_params=torch.zeros(len(COUNTS)),
                      eval_every=10 ** 6, threads=1)
    return loop.run().final.extras["models"].double(), w


def test_nodes_reach_the_closed_form_fixed_point_whose_mean_is_the_minimiser() -> None:
    """Locally x -> c x + a e_i (c = (1 - eta)^tau, a = 1 - c), then X <- W X: the fixed point
    is X* = a (I - c W)^-1 W E; since 1^T W = 1^T its mean is the mean of the e_i, the global
    minimiser, and every node is within O(eta) of it."""
    n = len(COUNTS)
    e = torch.eye(n, dtype=torch.float64)
    target = e.mean(0)
    spread = []
    for eta in (0.1, 0.01):
        models, w = gossip_quadratic(eta, rounds=400 if eta == 0.1 else 3000)
        c = (1 - eta) ** TAU
        fixed = (1 - c) * torch.linalg.solve(torch.eye(n, dtype=torch.float64) - c * w, w @ e)
        torch.testing.assert_close(models, fixed, atol=1e-6, rtol=0)
        torch.testing.assert_close(models.mean(0), target, atol=1e-6, rtol=0)
        spread.append(float((models - target).norm(dim=1).max()))
    assert spread[1] < spread[0] / 5  # a smaller step: every node nearer the minimiser


BASE = ["data.name=synthetic", "data.num_clients=12", "model.name=logreg", "client.lr=0.01",
        "rounds=3", "fleet.threads=1", "topology.kind=gossip", "fleet.workers=2"]


@pytest.mark.parametrize(("kind", "exact"), [("thread", True), ("process", True),
                                             ("vectorized", False)])
def test_gossip_runs_on_every_fleet(kind: str, exact: bool) -> None:
    def final(fleet: str) -> torch.Tensor:
        run = build_run(load_config(None, [*BASE, "topology.graph=torus",
                                           f"fleet.kind={fleet}"]))
        return run.run().final.extras["models"]

    serial, other = final("serial"), final(kind)
    if exact:
        assert torch.equal(other, serial)
    else:
        torch.testing.assert_close(other, serial, atol=1e-5, rtol=0)


def test_rows_report_the_mean_models_accuracy_and_the_consensus_distance() -> None:
    run = build_run(load_config(None, [*BASE, "topology.graph=links",
                                       "topology.links=[[0,1],[1,2],[2,3],[3,4],[4,5],[5,6],"
                                       "[6,7],[7,8],[8,9],[9,10],[10,11],[11,0],[0,6]]"]))
    history = run.run()
    models = history.final.extras["models"]
    assert torch.equal(history.final.params, models.mean(0))
    last = history.rows[-1]
    expected = float((models - models.mean(0)).double().square().sum(1).mean())
    assert last["consensus_distance"] == pytest.approx(expected, rel=1e-6)
    assert last["test_accuracy"] is not None and last["bytes_exchanged"] == 2 * 13 * 610 * 4


def test_gossip_refuses_algorithms_that_need_more_than_models() -> None:
    with pytest.raises(ConfigError, match="gossip trains every node with the plain exchange"):
        build_run(load_config(None, [*BASE, "algorithm.name=scaffold"]))
