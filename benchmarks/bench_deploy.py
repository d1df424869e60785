"""Deployment transport on loopback: gRPC rounds vs raw sockets moving the same bytes, and
rounds per second with 100 clients.

1. A model of ``--mb`` MiB goes to each of N client processes and comes back as its update
   (the clients echo it: no training), through :class:`GrpcFleet` (validation, finite checks),
   once with the bulk connection (headers on the gRPC stream, payloads as raw bytes beside it;
   the default) and once with every payload in 1 MiB chunk frames on the stream. The reference is
   the bare minimum: raw TCP sockets sending the same bytes to the same number of processes and
   reading them back, into one reused buffer per connection ("raw") or a fresh one per message
   ("raw fresh", as a receiver that keeps what it got must). Target: within 2x of raw.
2. Rounds per second of the full server loop (sampler, FedAvg aggregation) with 100 clients
   (threads spread over 4 processes) on a tiny model: the per-round overhead of deployment.

Run: ``python benchmarks/bench_deploy.py [--mb 64] [--clients 1 4] [--rounds 15]``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import struct
import threading
import time
from collections.abc import Sequence

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _echo_clients(port: int, ids: Sequence[int], ca: str | None = None) -> None:
    """A client process: one connection per id, each returning the model it receives (over
    TLS when ``ca`` is given)."""
    from fedloom.core.layout import ParamLayout
    from fedloom.core.packages import ClientResult, Downlink
    from fedloom.runtime.client_loop import Backoff, ClientLoop
    from fedloom.runtime.clients import Client
    from fedloom.transport.security import TlsFiles

    class Echo(Client):
        def run_fit(self, downlink: Downlink, layout: ParamLayout) -> ClientResult:
            return ClientResult(round=downlink.round, client_id=downlink.client_id,
                                params=downlink.params, num_examples=1, num_steps=1)

    tls = None if ca is None else TlsFiles(ca=ca)
    runners = [ClientLoop(f"127.0.0.1:{port}", client_id=c, client=Echo(), insecure=tls is None,
                            tls=tls, backoff=Backoff(initial=0.05, maximum=0.5, give_up_after=60))
               for c in ids]
    threads = [threading.Thread(target=r.run) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _spawn(target: object, args: tuple[object, ...]) -> mp.process.BaseProcess:
    proc = mp.get_context("spawn").Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def bench_grpc(mb: int, clients: int, rounds: int, bulk: bool = True,
               certs: object | None = None) -> float:
    """Median seconds of a round moving the model to ``clients`` processes and back (over TLS
    with ``certs``, a :class:`fedloom.transport.certs.CertFiles`)."""
    import torch

    from fedloom.core.layout import LayoutEntry, ParamLayout
    from fedloom.core.packages import ClientConfig, Downlink
    from fedloom.fleets.grpc import GrpcFleet, RoundPolicy
    from fedloom.transport.security import TlsFiles
    from fedloom.transport.service import FederationServer

    size = mb * 2**20 // 4
    layout = ParamLayout(entries=(LayoutEntry(name="w", shape=(size,), dtype=torch.float32,
                                              offset=0, trainable=True),))
    tls = None if certs is None else TlsFiles(cert=str(certs.server_cert),  # type: ignore[attr-defined]
                                              key=str(certs.server_key))  # type: ignore[attr-defined]
    server = FederationServer("127.0.0.1:0", layout=layout, insecure=tls is None, tls=tls,
                              bulk_port=0 if bulk else None).start()
    fleet = GrpcFleet(server, RoundPolicy(round_timeout=600))
    ca = None if certs is None else str(certs.ca)  # type: ignore[attr-defined]
    procs = [_spawn(_echo_clients, (server.port, [c], ca)) for c in range(clients)]
    try:
        fleet.wait_for_clients(clients, 300)
        while bulk and len(server.bulk_connected()) < clients:
            time.sleep(0.01)
        params = torch.randn(size)
        times = []
        for rnd in range(rounds + 1):  # the first round warms up
            tasks = [Downlink(round=rnd + 1, client_id=c, params=params, config=ClientConfig())
                     for c in range(clients)]
            start = time.perf_counter()
            outcomes = fleet.fit(rnd + 1, tasks)
            times.append(time.perf_counter() - start)
            assert all(hasattr(o, "params") for o in outcomes), outcomes
        return statistics.median(times[1:])
    finally:
        fleet.close()
        server.stop()
        for p in procs:
            p.join(timeout=30)


def _recv_exact(sock: socket.socket, buffer: memoryview) -> None:
    got = 0
    while got < len(buffer):
        n = sock.recv_into(buffer[got:])
        if n == 0:
            raise ConnectionError("closed")
        got += n


def _raw_client(port: int, nbytes: int, rounds: int, fresh: bool) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    buffer = bytearray(nbytes)
    for _ in range(rounds):
        header = bytearray(8)
        _recv_exact(sock, memoryview(header))
        if fresh:
            buffer = bytearray(nbytes)
        _recv_exact(sock, memoryview(buffer))
        sock.sendall(buffer)
    sock.close()


def bench_raw(mb: int, clients: int, rounds: int, *, fresh: bool) -> float:
    """The same bytes over plain TCP sockets: median seconds per round. ``fresh``: each
    message lands in a new buffer, as it must where the receiver keeps it (a server keeps every
    update until it aggregates); otherwise one buffer per connection is reused."""
    nbytes = mb * 2**20
    payload = os.urandom(nbytes)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    procs = [_spawn(_raw_client, (port, nbytes, rounds + 1, fresh)) for _ in range(clients)]
    conns = [listener.accept()[0] for _ in range(clients)]
    buffers = [bytearray(nbytes) for _ in range(clients)]

    def serve(conn: socket.socket, buffer: bytearray) -> None:
        conn.sendall(struct.pack("<q", nbytes))
        conn.sendall(payload)
        _recv_exact(conn, memoryview(bytearray(nbytes) if fresh else buffer))

    times = []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        threads = [threading.Thread(target=serve, args=(c, b)) for c, b in zip(conns, buffers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        times.append(time.perf_counter() - start)
    for c in conns:
        c.close()
    listener.close()
    for p in procs:
        p.join(timeout=30)
    return statistics.median(times[1:])


def _tiny_clients(port: int, ids: Sequence[int]) -> None:
    from fedloom.runtime.client_loop import Backoff, ClientLoop

    def fit(params: list[object], config: dict[str, object]) -> tuple[list[object], int,
                                                                      dict[str, float]]:
        return params, 1, {"train_loss": 0.0}

    runners = [ClientLoop(f"127.0.0.1:{port}", client_id=c, client=fit,  # type: ignore[arg-type]
                            insecure=True, backoff=Backoff(initial=0.05, maximum=0.5,
                                                           give_up_after=60)) for c in ids]
    threads = [threading.Thread(target=r.run) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def bench_rounds(clients: int, rounds: int, processes: int = 4) -> float:
    """Rounds per second of the server loop with every client in every round."""
    import torch

    from fedloom.algorithms import FedAvg
    from fedloom.core.layout import ParamLayout
    from fedloom.core.packages import ClientConfig
    from fedloom.fleets.grpc import GrpcFleet, RoundPolicy
    from fedloom.runtime.loop import ServerLoop
    from fedloom.runtime.sampling import UniformSampler
    from fedloom.transport.service import FederationServer

    model = torch.nn.Linear(60, 10)
    layout = ParamLayout.from_module(model)
    server = FederationServer("127.0.0.1:0", layout=layout, insecure=True).start()
    fleet = GrpcFleet(server, RoundPolicy(round_timeout=120))
    ids = list(range(clients))
    procs = [_spawn(_tiny_clients, (server.port, ids[k::processes])) for k in range(processes)]
    try:
        fleet.wait_for_clients(clients, 300)
        loop = ServerLoop(algorithm=FedAvg(), fleet=fleet, client=ClientConfig(),
                          sampler=UniformSampler(num_clients=clients, size=clients, seed=0),
                          evaluate=lambda p: {}, rounds=rounds, layout=layout,
                          initial_params=layout.module_to_flat(model), threads=1)
        start = time.perf_counter()
        history = loop.run()  # closes the fleet: the clients exit
        seconds = time.perf_counter() - start
        assert all(r["num_results"] == clients for r in history.rows)
        return rounds / seconds
    finally:
        fleet.close()
        server.stop()
        for p in procs:
            p.join(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=64, help="model size in MiB")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--tls", action="store_true", help="also time 1 client over TLS")
    parser.add_argument("--load-clients", type=int, default=100)
    parser.add_argument("--load-rounds", type=int, default=20)
    args = parser.parse_args()
    print(f"model {args.mb} MiB float32, {os.cpu_count()} cores, median of {args.rounds} rounds")
    print(f"{'clients':>7} {'MiB moved':>9} {'raw s':>7} {'raw fresh s':>11} {'bulk s':>7} "
          f"{'/raw':>5} {'/fresh':>6} {'chunks s':>8} {'/raw':>5} {'/fresh':>6} "
          f"{'bulk MiB/s':>10}")
    for n in args.clients:
        bulk_s = bench_grpc(args.mb, n, args.rounds, bulk=True)
        chunks_s = bench_grpc(args.mb, n, args.rounds, bulk=False)
        raw_s = bench_raw(args.mb, n, args.rounds, fresh=False)
        fresh_s = bench_raw(args.mb, n, args.rounds, fresh=True)
        moved = 2 * n * args.mb
        print(f"{n:>7} {moved:>9} {raw_s:>7.3f} {fresh_s:>11.3f} {bulk_s:>7.3f} "
              f"{bulk_s / raw_s:>5.2f} {bulk_s / fresh_s:>6.2f} {chunks_s:>8.3f} "
              f"{chunks_s / raw_s:>5.2f} {chunks_s / fresh_s:>6.2f} {moved / bulk_s:>10.0f}",
              flush=True)
    if args.tls:
        import tempfile

        from fedloom.transport.certs import make_certs

        with tempfile.TemporaryDirectory() as tmp:
            certs = make_certs(tmp, clients=1)
            tls_bulk = bench_grpc(args.mb, 1, args.rounds, bulk=True, certs=certs)
            tls_chunks = bench_grpc(args.mb, 1, args.rounds, bulk=False, certs=certs)
        print(f"TLS, 1 client: bulk {tls_bulk:.3f} s, chunks {tls_chunks:.3f} s "
              f"({2 * args.mb / tls_bulk:.0f} vs {2 * args.mb / tls_chunks:.0f} MiB/s)")
    rate = bench_rounds(args.load_clients, args.load_rounds)
    print(f"{args.load_clients} clients (threads in 4 processes), 610-value model: "
          f"{rate:.1f} rounds/s over {args.load_rounds} rounds")


if __name__ == "__main__":
    main()
