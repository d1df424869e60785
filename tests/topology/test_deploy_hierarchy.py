"""Hierarchical FL over gRPC: `fedloom server` (the root) <- `fedloom edge` x 2 <- clients."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedloom.app.build import build_run
from fedloom.app.client import ConfigClient
from fedloom.app.config import config_to_yaml, load_config
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientResult, Downlink
from fedloom.runtime.checkpoint import load_checkpoint
from fedloom.runtime.client_loop import Backoff
from fedloom.runtime.sinks import read_rows
from tests.loopback import fedloom_cmd, free_port, processes, spawn, thread_clients, wait_until

pytestmark = pytest.mark.integration

TIER = ["data.name=synthetic", "data.num_clients=4", "model.name=logreg", "client.lr=0.01",
        "fleet.threads=1", "cohort.size=4",
        "topology.nodes=[{name: cloud}, {name: e0, rounds: 2}, {name: e1, rounds: 2}]",
        "topology.edges=[[e0, cloud], [e1, cloud]]"]
QUIET = ["--insecure", "--quiet"]


def _model(run: Path, layout: ParamLayout) -> torch.Tensor:
    return layout.flatten(load_file(str(run / "model.safetensors")))


def test_a_three_tier_deployment_ends_with_the_simulated_hierarchys_model(
        tmp_path: Path) -> None:
    overrides = [*TIER, "rounds=3"]
    expected = build_run(load_config(None, overrides))
    config = tmp_path / "tier.yaml"
    config.write_text(config_to_yaml(load_config(None, overrides)))
    root_port, e0, e1 = free_port(), free_port(), free_port()
    up = f"127.0.0.1:{root_port}"
    with processes() as started:
        root = spawn(started, fedloom_cmd("server", str(config), "--address", up, *QUIET,
                                          f"out={tmp_path / 'root'}"))
        for name, port in (("e0", e0), ("e1", e1)):
            spawn(started, fedloom_cmd("edge", str(config), "--node", name, "--upstream", up,
                                       "--upstream-insecure", "--address",
                                       f"127.0.0.1:{port}", *QUIET, f"out={tmp_path / name}"))
        for port, ids in ((e0, "0,1"), (e1, "2,3")):
            spawn(started, fedloom_cmd("client", "--server", f"127.0.0.1:{port}",
                                       "--client-id", ids, "--insecure"))
        _, err = root.communicate(timeout=240)
        assert root.returncode == 0, err
        for proc in started[1:]:  # every edge and client is told to exit
            proc.wait(timeout=60)
            assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    final = expected.run().final.params
    assert torch.equal(_model(tmp_path / "root", expected.layout), final)
    assert [r["round"] for r in read_rows(tmp_path / "root" / "metrics.jsonl")] == [1, 2, 3]
    edge_rows = read_rows(tmp_path / "e0" / "metrics.jsonl")
    assert [(r["node"], r["node_round"]) for r in edge_rows] == \
        [("e0", s) for s in range(1, 7)]  # 2 edge rounds per root round, numbered as simulated


class SlowConfigClient(ConfigClient):
    """fedloom's trainer, a little slow, so that a round is long enough to be killed in."""

    def run_fit(self, downlink: Downlink, layout: ParamLayout) -> ClientResult:
        time.sleep(0.15)
        return super().run_fit(downlink, layout)


def test_an_edge_killed_mid_run_is_done_without_then_resumes(tmp_path: Path) -> None:
    nodes = ("topology.nodes=[{name: cloud, min_success: 1}, {name: e0, rounds: 2}, "
             "{name: e1, rounds: 2}]")
    overrides = [*TIER, nodes, "rounds=24"]
    config = tmp_path / "tier.yaml"
    config.write_text(config_to_yaml(load_config(None, overrides)))
    root_port, e0, e1 = free_port(), free_port(), free_port()
    up = f"127.0.0.1:{root_port}"
    backoff = Backoff(initial=0.1, maximum=0.5, give_up_after=120)

    def edge(name: str, port: int, *extra: str) -> list[str]:
        return fedloom_cmd("edge", str(config), "--node", name, "--upstream", up,
                           "--upstream-insecure", "--address", f"127.0.0.1:{port}", *QUIET,
                           *extra)

    with (processes() as started,
          thread_clients(e0, [0, 1], client=SlowConfigClient(), backoff=backoff),
          thread_clients(e1, [2, 3], client=SlowConfigClient(), backoff=backoff)):
        root = spawn(started, fedloom_cmd("server", str(config), "--address", up, *QUIET,
                                          f"out={tmp_path / 'root'}"))
        spawn(started, edge("e0", e0, f"out={tmp_path / 'e0'}"))
        victim = spawn(started, edge("e1", e1, f"out={tmp_path / 'e1'}"))

        def edge_did(rounds: int) -> bool:
            try:
                return load_checkpoint(tmp_path / "e1").state.round >= rounds
            except Exception:
                return False

        assert wait_until(lambda: edge_did(2), timeout=120), victim.communicate(timeout=5)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        done_before = load_checkpoint(tmp_path / "e1").state.round
        resumed = spawn(started, edge("e1", e1, "--resume", str(tmp_path / "e1")))
        _, err = root.communicate(timeout=240)
        assert root.returncode == 0, err
        resumed.wait(timeout=60)
        assert resumed.returncode == 0, resumed.stderr.read() if resumed.stderr else ""
        assert "resuming after parent round" in (resumed.stderr.read() if resumed.stderr else "")
    rows = read_rows(tmp_path / "root" / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(1, 25))  # nothing done was lost
    results = [r["num_results"] for r in rows]
    # rounds while e1 was down went on without it (1 result), unless it was back within
    # the parent's rejoin_timeout and got its task again; at the end it is there
    assert set(results) <= {1, 2} and results[-1] == 2
    assert results[:done_before] == [2] * done_before
    final = load_file(str(tmp_path / "root" / "model.safetensors"))
    assert all(bool(torch.isfinite(v).all()) for v in final.values())
    assert load_checkpoint(tmp_path / "e1").state.round > done_before
