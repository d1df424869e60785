"""Hierarchical FL in simulation: flat FedAvg as a special case, closed forms on quadratics,
every fleet, rows per level, resumable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedloom.algorithms.registry import AlgorithmConfig
from fedloom.app.build import build_run
from fedloom.app.config import load_config
from fedloom.app.experiment import run_experiment
from fedloom.core.packages import ClientConfig
from fedloom.runtime.assemble import assemble
from fedloom.runtime.sinks import read_rows
from fedloom.topology.build import build_hierarchy
from fedloom.topology.config import NodeConfig, TopologyConfig
from fedloom.topology.hierarchy import HierarchicalLoop
from fedloom.topology.tree import build_tree
from tests.algorithms.quadratic import Point, half_squared, quadratic_data

BASE = ["data.name=synthetic", "data.num_clients=8", "model.name=logreg", "client.lr=0.01",
        "rounds=3", "fleet.threads=1", "cohort.size=8"]
TWO_EDGES = ["topology.nodes=[{name: cloud}, {name: e0}, {name: e1}]",
             "topology.edges=[[e0, cloud], [e1, cloud]]"]


def test_one_level_of_edges_with_one_round_each_is_flat_fedavg() -> None:
    """Full participation, FedAvg everywhere, edge.rounds = 1: the example-weighted mean of the
    edges' example-weighted means is the flat mean (up to float rounding)."""
    flat = build_run(load_config(None, BASE)).run()
    hier = build_run(load_config(None, [*BASE, *TWO_EDGES])).run()
    assert isinstance(hier.final.params, torch.Tensor)
    torch.testing.assert_close(hier.final.params, flat.final.params, atol=1e-6, rtol=0)
    assert not torch.equal(hier.final.params, build_run(load_config(None, BASE)).initial_params)
    assert [r["round"] for r in hier.rows] == [1, 2, 3]  # the history holds the root's rows


COUNTS = (3, 1, 2, 4, 2, 3)
ETA, TAU = 0.1, 3


def quadratic_hierarchy(edge_rounds: tuple[int, int], rounds: int) -> torch.Tensor:
    """Clients 1/2 ||x - e_i||^2 (e_i the unit vectors), TAU full-batch steps each, two edges
    of three clients, FedAvg at the edges and the root."""
    data = quadratic_data(COUNTS)
    topo = TopologyConfig(nodes=(NodeConfig(name="root"),
                                 NodeConfig(name="a", rounds=edge_rounds[0]),
                                 NodeConfig(name="b", rounds=edge_rounds[1])),
                          edges=(("a", "root"), ("b", "root")))
    tree = build_tree(topo, num_clients=len(COUNTS), seed=0)
    model_fn = lambda: Point(len(COUNTS))  # noqa: E731
    layout_model = model_fn()
    from fedloom.core.layout import ParamLayout

    layout = ParamLayout.from_module(layout_model)
    root = build_hierarchy(tree, algorithm=AlgorithmConfig(name="fedavg", options=None),
                           num_examples=COUNTS, layout=layout, seed=0)
    parts = assemble(data=data, model_fn=model_fn, algorithm=root.children[0].algorithm,
                     loss_fn=half_squared, reducible=False)
    loop = HierarchicalLoop(root=root, fleet=parts.fleet, evaluate=lambda p: {},
                            client=ClientConfig(steps=TAU, batch_size=0, lr=ETA), rounds=rounds,
                            layout=parts.layout, initial_params=torch.zeros(len(COUNTS)),
                            eval_every=10 ** 6, threads=1)
    return loop.run().final.params.double()


def test_equal_edge_rounds_follow_the_closed_form_trajectory() -> None:
    """Edge FedAvg contracts x -> e_edge + c (x - e_edge), c = (1 - eta)^tau, once per edge
    round; the root's example-weighted mean of K such rounds per edge is
    x -> e + c^K (x - e), with e the global weighted mean: after T rounds x = e (1 - c^(KT))."""
    p = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    c = (1 - ETA) ** TAU
    for k, t in ((1, 4), (3, 2)):
        got = quadratic_hierarchy((k, k), t)
        torch.testing.assert_close(got, p * (1 - c ** (k * t)), atol=1e-6, rtol=0)


def test_unequal_edge_rounds_reach_their_closed_form_fixed_point() -> None:
    """With K_a != K_b the root maps x -> sum_e w_e (e_e + c^K_e (x - e_e)); its fixed point is
    sum_e w_e (1 - c^K_e) e_e / sum_e w_e (1 - c^K_e)."""
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    c = (1 - ETA) ** TAU
    fixed = torch.zeros(len(COUNTS), dtype=torch.float64)
    total = 0.0
    for members, k in (((0, 1, 2), 1), ((3, 4, 5), 4)):
        w = float(counts[list(members)].sum())
        e_edge = torch.zeros(len(COUNTS), dtype=torch.float64)
        e_edge[list(members)] = counts[list(members)] / w
        fixed += w * (1 - c ** k) * e_edge
        total += w * (1 - c ** k)
    got = quadratic_hierarchy((1, 4), 200)
    torch.testing.assert_close(got, fixed / total, atol=1e-6, rtol=0)
    flat_optimum = counts / counts.sum()
    assert not torch.allclose(got, flat_optimum, atol=1e-3)  # the unequal work biases it


# cloud (the run's fedavgm) <- mid (fedavgm, 2 rounds) <- e0 (2 rounds, 2 of its clients), e1
#                           <- e2 (3 rounds); the leaves run fedavg; 12 clients dealt round robin
FEDAVG = "algorithm: {name: fedavg}"
DEEP = [f"topology.nodes=[{{name: cloud}}, {{name: mid, rounds: 2}}, "
        f"{{name: e0, rounds: 2, cohort: 2, {FEDAVG}}}, {{name: e1, {FEDAVG}}}, "
        f"{{name: e2, rounds: 3, {FEDAVG}}}]",
        "topology.edges=[[mid, cloud], [e2, cloud], [e0, mid], [e1, mid]]",
        "algorithm.name=fedavgm", "data.num_clients=12", "topology.deal=round_robin"]


def _final(kind: str, *extra: str) -> torch.Tensor:
    cfg = load_config(None, [*BASE, *DEEP, f"fleet.kind={kind}", "fleet.workers=2", *extra])
    return build_run(cfg).run().final.params


@pytest.mark.parametrize(("kind", "exact"), [("thread", True), ("process", True),
                                             ("vectorized", False)])
def test_a_three_level_hierarchy_runs_on_every_fleet(kind: str, exact: bool) -> None:
    serial = _final("serial")
    other = _final(kind)
    if exact:
        assert torch.equal(other, serial)
    else:
        torch.testing.assert_close(other, serial, atol=1e-5, rtol=0)


# lockstep: step 1 trains e0, e1 (mid's round 1) and e2 together; mid's round ends with e0's 2nd
PER_ROUND = [(2, "e0", 1), (2, "e1", 1), (1, "e2", 1), (2, "e0", 2), (1, "mid", 1),
             (1, "e2", 2), (2, "e0", 3), (2, "e1", 2), (1, "e2", 3), (2, "e0", 4),
             (1, "mid", 2), (0, "cloud", None)]


def test_rows_per_level_with_the_bytes_each_moved(tmp_path: Path) -> None:
    cfg = load_config(None, [*BASE, *DEEP, "rounds=2", f"out={tmp_path / 'run'}"])
    result = run_experiment(cfg, console=False)
    rows = read_rows(tmp_path / "run" / "metrics.jsonl")
    per_round = [(r["level"], r["node"], r.get("node_round")) for r in rows if r["round"] == 1]
    # the root picks 2 of its 2 collaborators; mid runs 2 rounds of e0 (2 rounds each) and e1
    assert per_round == PER_ROUND
    model = 61 * 10 * 4  # logreg on 60 features, 10 classes, float32
    e0 = [r for r in rows if r["node"] == "e0"]
    assert all(r["bytes_down"] == r["cohort_size"] * model for r in e0)
    assert all(r["bytes_up"] == r["num_results"] * model for r in e0)
    cloud = [r for r in rows if r["level"] == 0]
    assert [r["round"] for r in cloud] == [1, 2] == [r["round"] for r in result.history.rows]
    assert all(r["bytes_down"] == 2 * model for r in cloud)
    assert cloud[-1]["test_accuracy"] is not None
    assert (tmp_path / "run" / "metrics.png").exists()


def test_a_hierarchy_resumes_bitwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = [*BASE, *DEEP, "rounds=4", "checkpoint.every=1", "algorithm.name=fedadam"]
    reference = run_experiment(load_config(None, [*overrides, f"out={tmp_path / 'ref'}"]),
                               console=False)
    cfg = load_config(None, [*overrides, f"out={tmp_path / 'run'}"])
    original = HierarchicalLoop.run_round

    def stop_at_three(self: HierarchicalLoop, t: int) -> object:
        if t == 3:
            raise KeyboardInterrupt
        return original(self, t)

    with monkeypatch.context() as patch:
        patch.setattr(HierarchicalLoop, "run_round", stop_at_three)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(cfg, console=False)
    result = run_experiment(cfg, console=False, resume=tmp_path / "run")
    assert [r["round"] for r in result.history.rows] == [3, 4]
    assert torch.equal(result.history.final.params, reference.history.final.params)
    assert read_rows(tmp_path / "run" / "metrics.jsonl")[-1]["round"] == 4


def test_aggregators_with_different_client_halves_are_refused() -> None:
    from fedloom.core.errors import ConfigError

    nodes = ("topology.nodes=[{name: cloud}, {name: e0, algorithm: {name: fedprox}}, "
             "{name: e1}]")
    with pytest.raises(ConfigError, match="leaf aggregators' algorithms differ"):
        build_run(load_config(None, [*BASE, nodes, TWO_EDGES[1]]))
    with pytest.raises(ConfigError, match="aggregator 'cloud' runs scaffold, which needs more"):
        build_run(load_config(None, [*BASE, *TWO_EDGES, "algorithm.name=scaffold",
                                     "topology.nodes=[{name: cloud}, {name: e0, algorithm: "
                                     "{name: fedavg}}, {name: e1, algorithm: {name: fedavg}}]"]))
    with pytest.raises(ConfigError, match="asynchronous algorithms do not run in a topology"):
        build_run(load_config(None, [*BASE, *TWO_EDGES, "algorithm.name=fedbuff"]))


@pytest.mark.integration
def test_a_hierarchy_on_two_torchrun_ranks_is_bitwise_serial(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from fedloom.app.config import config_to_yaml
    from tests.fleets.test_distributed import torchrun

    cfg = load_config(None, [*BASE, *DEEP, "rounds=2"])
    config = tmp_path / "run.yaml"
    config.write_text(config_to_yaml(cfg))
    proc = torchrun(2, ["-m", "fedloom", "run", str(config), "--quiet", "fleet.kind=distributed",
                        f"out={tmp_path / 'dist'}"], tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr
    serial = run_experiment(load_config(config, [f"out={tmp_path / 'serial'}"]), console=False)
    got = load_file(str(tmp_path / "dist" / "model.safetensors"))
    assert torch.equal(serial.history.final.params,
                       serial.history.layout.flatten(got))
