"""Whole deployments with real processes on loopback: the same model as the simulation, a
client killed mid-round, and a server killed with SIGKILL and resumed."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedloom.app.build import build_run
from fedloom.app.client import ConfigClient
from fedloom.app.config import config_to_yaml, load_config
from fedloom.app.experiment import RunResult
from fedloom.app.server import ServerOptions, run_server
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientResult, Downlink
from fedloom.fleets.grpc import RoundPolicy
from fedloom.runtime.checkpoint import load_checkpoint
from fedloom.runtime.client_loop import Backoff
from fedloom.runtime.sinks import read_rows
from fedloom.transport.handlers import Handlers, MessageType
from tests.loopback import (
    SYNTH,
    Recorder,
    fedloom_cmd,
    free_port,
    processes,
    spawn,
    thread_clients,
    wait_until,
)

pytestmark = pytest.mark.integration


def simulated(overrides: list[str]) -> dict[str, torch.Tensor]:
    sim = build_run(load_config(None, overrides))
    return sim.layout.unflatten(sim.run().final.params)


def serve_in_background(overrides: list[str], options: ServerOptions
                        ) -> tuple[threading.Thread, list[RunResult | BaseException]]:
    box: list[RunResult | BaseException] = []

    def serve() -> None:
        try:
            box.append(run_server(load_config(None, overrides), options))
        except BaseException as err:
            box.append(err)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread, box


def test_three_client_processes_give_the_simulations_model_bit_for_bit(tmp_path: Path) -> None:
    port = free_port()
    with processes() as started:
        clients = [spawn(started, fedloom_cmd(
            "client", "--server", f"127.0.0.1:{port}", "--client-id", f"{k},{k + 3}",
            "--insecure")) for k in range(3)]  # before the server: they back off and retry
        result = run_server(load_config(None, [*SYNTH, f"out={tmp_path / 'run'}"]),
                            ServerOptions(address=f"127.0.0.1:{port}", insecure=True,
                                          console=False, start_timeout=120))
        outputs = [p.communicate(timeout=60) for p in clients]
    assert [p.returncode for p in clients] == [0, 0, 0], outputs
    assert all("the run is over" in out for out, _ in outputs)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.safetensors", "config.yaml", "metrics.jsonl", "metrics.png",
        "model.safetensors"]
    deployed = load_file(str(run / "model.safetensors"))
    sim = build_run(load_config(None, SYNTH))
    sim_history = sim.run()
    expected = sim.layout.unflatten(sim_history.final.params)
    assert all(torch.equal(deployed[k], v) for k, v in expected.items())
    sim_rows = sim_history.rows
    rows = read_rows(run / "metrics.jsonl")
    assert [r["test_accuracy"] for r in rows] == [r["test_accuracy"] for r in sim_rows]
    assert result.history.rows[-1]["test_accuracy"] == sim_rows[-1]["test_accuracy"]


def test_secure_aggregation_with_the_command_line_clients(tmp_path: Path) -> None:
    """``fedloom client`` processes take part in SecAgg+ when the server's config enables it:
    the run ends with a model within quantisation steps of the plain run's."""
    port = free_port()
    secure = [*SYNTH, "secagg.enabled=true", "secagg.threshold=2", "cohort.min_success=3"]
    with processes() as started:
        clients = [spawn(started, fedloom_cmd(
            "client", "--server", f"127.0.0.1:{port}", "--client-id", f"{k},{k + 3}",
            "--insecure")) for k in range(3)]
        run_server(load_config(None, [*secure, f"out={tmp_path / 'run'}"]),
                   ServerOptions(address=f"127.0.0.1:{port}", insecure=True, console=False,
                                 start_timeout=120))
        outputs = [p.communicate(timeout=60) for p in clients]
    assert [p.returncode for p in clients] == [0, 0, 0], outputs
    deployed = load_file(str(tmp_path / "run" / "model.safetensors"))
    plain = simulated(SYNTH)
    assert all(torch.allclose(deployed[k], v, atol=1e-4, rtol=0) for k, v in plain.items())
    assert len(read_rows(tmp_path / "run" / "metrics.jsonl")) == 3


SLOW_TRAINER = """\
import os, pathlib, shutil, sys, time
source, target = sys.argv[1], sys.argv[2]
pathlib.Path(os.environ["MARKER"]).touch()
time.sleep(float(os.environ["SLOW"]))
shutil.copy(source, target)
"""


def test_a_client_killed_mid_round_gets_its_task_again_when_it_returns(
        tmp_path: Path) -> None:
    """Cohorts for seed 0: round 1 is [0, 1, 5], round 2 [2, 3, 4], round 3 [0, 2, 3]. Client
    0 is killed while training in round 1; restarted, it is sent the same task again and
    answers it, so round 1 keeps all three results."""
    script = tmp_path / "slow.py"
    script.write_text(SLOW_TRAINER)
    marker = tmp_path / "training"
    handlers = Handlers()
    events = Recorder(handlers, MessageType.FIT_REPLY, MessageType.FAILURE,
                      MessageType.CONNECTED)
    port = free_port()
    command = ["client", "--server", f"127.0.0.1:{port}", "--client-id", "0", "--insecure",
               "--command", f"{sys.executable} {script} {{input}} {{output}}"]
    overrides = [*SYNTH, "cohort.min_success=2", f"out={tmp_path / 'run'}"]
    with processes() as started:
        first = spawn(started, fedloom_cmd(*command), start_new_session=True,
                      env={"SLOW": "60", "MARKER": str(marker)})
        thread, box = serve_in_background(overrides, ServerOptions(
            address=f"127.0.0.1:{port}", insecure=True, console=False, start_timeout=120,
            handlers=handlers, policy=RoundPolicy(round_timeout=120, absent_timeout=120),
            sample_connected=False))  # round 3 waits for client 0 to come back
        with thread_clients(port, [1, 2, 3, 4, 5], client=ConfigClient()):
            assert wait_until(marker.exists, timeout=120), ("client 0 never started training",
                                                            box, first.poll())
            os.killpg(first.pid, signal.SIGKILL)  # the client and its training command
            first.wait(timeout=30)
            spawn(started, fedloom_cmd(*command), env={"SLOW": "0", "MARKER": str(marker)})
            thread.join(timeout=180)
    assert isinstance(box[0], RunResult), box
    rows = read_rows(tmp_path / "run" / "metrics.jsonl")
    assert [(r["num_results"], r["num_failures"]) for r in rows] == [(3, 0), (3, 0), (3, 0)]
    failure = next(e for e in events.of(MessageType.FAILURE) if e.client_id == 0)
    assert failure.round == 1 and failure.detail["stage"] == "disconnect"
    assert [e.round for e in events.of(MessageType.FIT_REPLY) if e.client_id == 0] == [1, 3]
    assert [e.client_id for e in events.of(MessageType.CONNECTED)].count(0) == 2


def test_a_client_that_never_connects_is_replaced_in_its_cohorts(tmp_path: Path) -> None:
    """Client 0 never comes (cohorts for seed 0 draw it in rounds 1 and 3): each round takes a
    connected client instead of waiting the absent timeout."""
    handlers = Handlers()
    events = Recorder(handlers, MessageType.FIT_REPLY)
    port = free_port()
    with thread_clients(port, [1, 2, 3, 4, 5], client=ConfigClient()):
        start = time.monotonic()
        result = run_server(load_config(None, [*SYNTH, f"out={tmp_path / 'run'}"]), ServerOptions(
            address=f"127.0.0.1:{port}", insecure=True, console=False, min_clients=5,
            start_timeout=60, handlers=handlers,
            policy=RoundPolicy(round_timeout=120, absent_timeout=120)))
        seconds = time.monotonic() - start
    assert [(r["num_results"], r["num_failures"]) for r in result.history.rows] == [(3, 0)] * 3
    assert 0 not in {e.client_id for e in events.of(MessageType.FIT_REPLY)}
    assert seconds < 60  # nobody waited 120 s for client 0


class SlowConfigClient(ConfigClient):
    """fedloom's trainer, a little slow, so that a round is long enough to be killed in."""

    def run_fit(self, downlink: Downlink, layout: ParamLayout) -> ClientResult:
        time.sleep(0.3)
        return super().run_fit(downlink, layout)


@pytest.mark.parametrize("kill_at", ["after_checkpoint", "during_fit", "after_row"])
def test_a_server_killed_with_sigkill_resumes_to_the_uninterrupted_model(
        tmp_path: Path, kill_at: str) -> None:
    """SIGKILL at several points of a round (once round 2's checkpoint is written; while the
    clients train round 3; as soon as round 3's metrics row is out, maybe before its
    checkpoint), then ``--resume`` while the old clients reconnect and a second set of client
    processes with the same ids joins: the final model is the uninterrupted run's, bit for
    bit."""
    overrides = [*SYNTH, "rounds=5", "algorithm.name=scaffold"]
    config = tmp_path / "run.yaml"
    config.write_text(config_to_yaml(load_config(None, overrides)))
    run = tmp_path / "run"
    port = free_port()
    serve = ["--address", f"127.0.0.1:{port}", "--insecure", "--quiet"]
    handlers = Handlers()
    fits = Recorder(handlers, MessageType.FIT)
    backoff = Backoff(initial=0.1, maximum=1.0, give_up_after=120)

    def reached() -> bool:
        try:
            if kill_at == "during_fit":
                return any(e.round == 3 for e in fits.of(MessageType.FIT))
            if kill_at == "after_row":
                return len(read_rows(run / "metrics.jsonl")) >= 3
            return load_checkpoint(run).state.round >= 2
        except Exception:
            return False

    with processes() as started, thread_clients(port, range(6), client=SlowConfigClient(),
                                                backoff=backoff, handlers=handlers):
        server = spawn(started, fedloom_cmd("server", str(config), *serve, f"out={run}"))
        assert wait_until(reached, timeout=120), server.communicate(timeout=5)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        killed_at = load_checkpoint(run).state.round
        assert killed_at < 5
        resumed = spawn(started, fedloom_cmd("server", "--resume", str(run), *serve))
        with thread_clients(port, range(6), client=SlowConfigClient(), backoff=backoff):
            _, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err
    expected = simulated(overrides)
    deployed = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(deployed[k], v) for k, v in expected.items())
    assert [r["round"] for r in read_rows(run / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert f"resuming after round {killed_at}" in err
