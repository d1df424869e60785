"""A server under a file-descriptor limit of 256 while 400 idle, never-authenticating TCP
connections are held open against it: it sheds them (a cap on connections derived from the
limit, a handshake deadline) and the run completes with every checkpoint written."""

from __future__ import annotations

import resource
import socket
import subprocess
import time
from pathlib import Path

import pytest

from fedloom.app.client import ConfigClient
from fedloom.app.config import config_to_yaml, load_config
from fedloom.runtime.checkpoint import load_checkpoint
from fedloom.runtime.client_loop import Backoff
from tests.loopback import SYNTH, fedloom_cmd, free_port, processes, spawn, thread_clients

pytestmark = pytest.mark.integration

FD_LIMIT = 256
FLOOD = 400


def _limit_fds() -> None:  # in the server process, before it execs
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def _listening(port: int, server: subprocess.Popen[str], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


def test_a_server_out_of_descriptors_sheds_idle_connections_and_completes_the_run(
        tmp_path: Path) -> None:
    port = free_port()
    run = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(config_to_yaml(load_config(None, SYNTH)))
    flood: list[socket.socket] = []
    with processes() as started:
        server = spawn(started, fedloom_cmd(
            "server", str(config), f"out={run}", "--address", f"127.0.0.1:{port}", "--insecure",
            "--quiet", "--handshake-timeout", "2", "--start-timeout", "90"),
            preexec_fn=_limit_fds)
        assert _listening(port, server), server.communicate(timeout=5)
        try:
            for _ in range(FLOOD):  # idle: no TLS, no HTTP/2 preface, no call, ever
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            with thread_clients(port, range(6), client=ConfigClient(),
                                backoff=Backoff(initial=0.1, maximum=1.0, give_up_after=90)):
                _, err = server.communicate(timeout=120)
        finally:
            for s in flood:
                s.close()
    assert server.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert load_checkpoint(run).state.round == 3
