"""OpenFed's Maintainer on fedloom's server and client: the OpenFed example as three
processes, and the per-step options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

import fedloom.topology as topo
from fedloom.core.errors import ConfigError
from tests.loopback import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "openfed"


@pytest.mark.integration
def test_openfeds_example_as_three_processes_averages_the_uploads() -> None:
    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "GRPC_VERBOSITY": "ERROR"}
    procs = [subprocess.Popen([sys.executable, str(EXAMPLE / f"{name}.py"), port], cwd=EXAMPLE,
                              env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
             for name in ("aggregator", "alpha", "beta")]
    try:
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    report = "\n".join(f"--- exit {p.returncode}\n{out}\n{err}" for p, (out, err) in
                       zip(procs, outputs))
    assert all(p.returncode == 0 for p in procs), report
    aggregator, *collaborators = (json.loads(out.strip().splitlines()[-1])
                                  for out, _ in outputs)
    total = sum(c["instances"] for c in collaborators)
    for key, got in aggregator["aggregated"].items():
        expected = sum(torch.tensor(c["uploaded"][key]) * c["instances"] / total
                       for c in collaborators)
        torch.testing.assert_close(torch.tensor(got), expected, atol=1e-6, rtol=0)
    assert sorted((u["nick_name"], u["instances"]) for u in aggregator["uploads"]) == \
        [("alpha", 10), ("beta", 30)]


def group(port: int, name: str) -> topo.FederatedGroup:
    topology = topo.Topology()
    topology.add_node_list([topo.Node("agg", f"127.0.0.1:{port}"), topo.Node("a"),
                            topo.Node("b")])
    topology.add_edge(topo.Edge(topo.Node("a"), topo.Node("agg")))
    topology.add_edge("b", "agg")
    (props,) = topo.analysis(topology, name)
    return props


def test_rounds_in_threads_with_versions_and_a_count_below_the_group() -> None:
    """Two rounds; the second counts one upload (``count_step(1)``); versions advance."""
    port = free_port()
    agg_net = nn.Linear(3, 1)
    aggregator = topo.Maintainer(group(port, "agg"), agg_net.state_dict(keep_vars=True))
    assert aggregator.aggregator and not aggregator.collaborator
    with aggregator:
        topo.device_alignment()
        topo.count_step(2)

    def collaborator(name: str, value: float, rounds: int) -> None:
        net = nn.Linear(3, 1)
        m = topo.Maintainer(group(port, name), net.state_dict(keep_vars=True))
        assert m.collaborator and m.nick_name == name
        for _ in range(rounds):
            assert m.step(upload=False)
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(value)
            m.meta["instances"] = 1
            m.package()
            assert m.step(download=False)

    threads = [threading.Thread(target=collaborator, args=("a", 1.0, 2)),
               threading.Thread(target=collaborator, args=("b", 3.0, 1))]
    for t in threads:
        t.start()
    start = {k: v.clone() for k, v in agg_net.state_dict().items()}
    assert aggregator.step()
    assert aggregator.version == 1
    for k, v in agg_net.state_dict().items():  # (start + 1 + start + 3) / 2
        torch.testing.assert_close(v, start[k] + 2.0)
    with aggregator:
        topo.count_step(1)
    assert aggregator.step()  # only "a" answers the second round
    assert aggregator.version == 2 and [m["nick_name"] for m in aggregator.meta_list] == \
        ["a", "b", "a"]
    for k, v in agg_net.state_dict().items():
        torch.testing.assert_close(v, start[k] + 3.0)
    aggregator.manual_stop()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)


def test_options_outside_a_with_block_and_bad_uses_are_named() -> None:
    with pytest.raises(ConfigError, match="count_step: call it inside `with maintainer:`"):
        topo.count_step(2)
    topology = topo.Topology()
    topology.add_node_list([topo.Node("agg", topo.empty_address), topo.Node("a")])
    topology.add_edge("a", "agg")
    with pytest.raises(ConfigError, match="its aggregator has no tcp:// address"):
        topo.Maintainer(topo.analysis(topology, "a")[0], {})
    assert topology.fetch_node_via_nick_name("a") == topo.Node("a")
    assert topo.Node("x", topo.default_tcp_address).host_port == "localhost:1994"
