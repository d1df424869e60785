"""``fedloom demo deploy``: a server and client processes on loopback, FedAvg on MNIST.

The server and each client are separate ``fedloom`` processes, exactly as on separate machines;
MNIST is read the way the simulation reads it (``$FEDLOOM_DATA``, ``../shared/data``, ...). With
``tls`` the demo first makes a CA, certificates and tokens (``fedloom certs``) and runs with TLS
and token authentication; otherwise it runs ``--insecure`` on 127.0.0.1.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fedloom.core.errors import ClientError

DEMO_CONFIG = """\
# fedloom demo deploy: FedAvg on MNIST, 2NN, the partitions spread over the client processes
name: demo-deploy
rounds: 5
seed: 0
data: {{name: mnist, num_clients: {num_clients}, partition: iid}}
model: {{name: mlp}}
algorithm: {{name: fedavg}}
cohort: {{size: {cohort}}}
client: {{epochs: 1, batch_size: 10, lr: 0.1}}
"""
PARTITIONS_PER_PROCESS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fedloom(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedloom", *args]


def run_demo(*, clients: int = 3, port: int = 0, tls: bool = False,
             overrides: Sequence[str] = (), root: Path | None = None) -> Path:
    """Run the demo; returns its run directory. Every process it starts is stopped at the end."""
    base = root or Path("runs") / f"demo-deploy-{time.strftime('%Y%m%d-%H%M%S')}"
    base.mkdir(parents=True, exist_ok=True)
    num_clients = clients * PARTITIONS_PER_PROCESS
    config = base / "demo.yaml"
    config.write_text(DEMO_CONFIG.format(num_clients=num_clients, cohort=2 * clients),
                      encoding="utf-8")
    address = f"127.0.0.1:{port or free_port()}"
    server_security = ["--insecure"]
    client_security: list[list[str]] = [["--insecure"]] * clients
    if tls:
        from fedloom.transport.certs import make_certs

        certs = make_certs(base / "certs", clients=num_clients)
        server_security = ["--cert", str(certs.server_cert), "--key", str(certs.server_key),
                           "--tokens", str(certs.tokens)]
        client_security = [["--root-cert", str(certs.ca), "--token-file", str(certs.tokens)]
                           ] * clients
    processes: list[subprocess.Popen[bytes]] = []
    try:
        server = subprocess.Popen(_fedloom("server", str(config), "--address", address,
                                           *server_security, f"out={base / 'run'}",
                                           *overrides))
        processes.append(server)
        for k in range(clients):
            ids = ",".join(str(c) for c in range(k, num_clients, clients))
            processes.append(subprocess.Popen(_fedloom(
                "client", "--server", address, "--client-id", ids, *client_security[k]),
                stdout=subprocess.DEVNULL))
        code = server.wait()
        for p in processes[1:]:
            p.wait(timeout=60)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    if code != 0:
        raise ClientError(f"the demo server exited with status {code}")
    return base / "run"
