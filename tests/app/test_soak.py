"""Soak: a deployment of 100 MNIST clients in ten processes, 30% of them killed with SIGKILL
every few rounds and restarted, and one hostile client sending a rotating set of bad updates,
for 30 rounds: the run completes, no round is lost, and the final accuracy is within one point
of the same run without faults (the simulation, which a fault-free deployment equals bit for
bit)."""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import torch

from fedloom.app.build import build_run
from fedloom.app.client import ConfigClient
from fedloom.app.config import config_to_yaml, load_config
from fedloom.core.errors import DataError
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientResult, Downlink
from fedloom.runtime.client_loop import Backoff
from fedloom.runtime.sinks import read_rows
from tests.loopback import ROOT, fedloom_cmd, free_port, processes, thread_clients, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration]

OVERRIDES = ["data.name=mnist", "data.num_clients=100", "model.name=mlp", "rounds=30",
             "cohort.size=10", "client.lr=0.1", "client.batch_size=10", "fleet.threads=1",
             "eval.every=5"]
HOSTILE = 99
GROUPS = [list(range(g * 10, g * 10 + 10)) for g in range(10)]
GROUPS[-1].remove(HOSTILE)


class Hostile(ConfigClient):
    """Trains, then sends one of: NaN, values near float32's maximum, zeros with a forged
    example count, the wrong number of values; in turn."""

    forgeries = itertools.cycle(["nan", "huge", "count", "size"])

    def run_fit(self, downlink: Downlink, layout: ParamLayout) -> ClientResult:
        honest = super().run_fit(downlink, layout)
        how = next(self.forgeries)
        if how == "nan":
            return dataclasses.replace(honest, params=torch.full_like(honest.params, float("nan")))
        if how == "huge":
            return dataclasses.replace(honest, params=torch.full_like(honest.params, 3e38))
        if how == "count":
            return dataclasses.replace(honest, params=torch.zeros_like(honest.params),
                                       num_examples=1 << 40)
        return dataclasses.replace(honest, params=honest.params[:-1])


def test_a_deployment_survives_killed_clients_and_a_hostile_one(tmp_path: Path) -> None:
    cfg = load_config(None, OVERRIDES)
    try:
        expected = build_run(cfg).run().rows[-1]["test_accuracy"]
    except DataError as err:
        pytest.skip(f"MNIST is not here: {err}")
    config = tmp_path / "soak.yaml"
    config.write_text(config_to_yaml(cfg))
    run = tmp_path / "run"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "GRPC_VERBOSITY": "ERROR"}

    def client(group: list[int]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            fedloom_cmd("client", "--server", f"127.0.0.1:{port}", "--insecure",
                        "--client-id", ",".join(map(str, group)), "--retry-for", "600"),
            cwd=ROOT, env=env, text=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)

    with processes() as started:
        server = subprocess.Popen(
            fedloom_cmd("server", str(config), "--address", f"127.0.0.1:{port}", "--insecure",
                        "--quiet", "--round-timeout", "60", f"out={run}"),
            cwd=ROOT, env=env, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(server)
        procs = [client(g) for g in GROUPS]
        started.extend(procs)
        stop = threading.Event()

        def chaos() -> None:
            """Every 3 rounds, kill three of the ten client processes and restart them."""
            killed_at = 0
            while not stop.is_set():
                rows = len(read_rows(run / "metrics.jsonl")) if (run / "metrics.jsonl").exists() \
                    else 0
                if rows >= killed_at + 3 and rows < 27:
                    killed_at = rows
                    for i in (rows % 10, (rows + 3) % 10, (rows + 7) % 10):
                        os.killpg(procs[i].pid, signal.SIGKILL)
                        procs[i].wait(timeout=30)
                        procs[i] = client(GROUPS[i])
                        started.append(procs[i])
                stop.wait(0.5)

        with thread_clients(port, [HOSTILE], client=Hostile(),
                            backoff=Backoff(initial=0.2, maximum=2.0, give_up_after=600)):
            killer = threading.Thread(target=chaos, daemon=True)
            killer.start()
            try:
                _, err = server.communicate(timeout=1500)
            finally:
                stop.set()
                killer.join(timeout=30)
        assert wait_until(lambda: server.returncode is not None, timeout=5)
    assert server.returncode == 0, err[-4000:]
    rows = read_rows(run / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(1, 31))  # no round lost
    got = rows[-1]["test_accuracy"]
    assert abs(got - expected) <= 0.01, (got, expected)  # type: ignore[operator]
