"""The deployment subcommands: ``fedloom server``, ``client``, ``certs`` and ``demo``.

:func:`add_commands` only builds parsers (no heavy imports); :func:`main` runs one command.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from fedloom.cli.common import report, run_config
from fedloom.core.errors import ConfigError

if TYPE_CHECKING:
    from fedloom.app.server import ServerOptions

#: the loggers of a deployment's parts, shown at INFO by the deployment commands
DEPLOY_LOGGERS = ("fedloom.transport", "fedloom.fleets.grpc", "fedloom.runtime.client_loop",
                  "fedloom.runtime.async_loop", "fedloom.app.server", "fedloom.app.edge",
                  "fedloom.app.rundir", "fedloom.app.demo")

SERVER_EPILOG = """\
security: TLS is on unless --insecure; clients authenticate with tokens (--tokens FILE, one
'CLIENT_ID TOKEN' per line; `fedloom certs DIR` writes one) and/or client certificates
(--client-ca). Resume a killed server with --resume RUN_DIR (same config and seed).
"""

EDGE_EPILOG = """\
An edge serves its collaborators (the clients, or the edges, below its node in the config's
topology) like `fedloom server` (same TLS, token and round flags), and connects to its parent
(--upstream) as an authenticated client; its client id there is its position among the
parent's collaborators. It waits for its collaborators (--min-clients, default all) before it
connects upstream. --resume RUN_DIR restarts a killed edge from its last parent round.
"""

CLIENT_EPILOG = """\
The token may also come from --token-file (lines 'CLIENT_ID TOKEN') or $FEDLOOM_TOKEN, which keep
it out of the process list. Several ids (--client-id 0,3,5) open one connection each and share
this process's data and trainer. Without --config the client builds from the server's config.
"""


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 overrides_help: str) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    server = sub.add_parser("server", help="serve a run to remote clients over gRPC",
                            epilog=SERVER_EPILOG + "\n" + overrides_help, formatter_class=raw)
    server.add_argument("config", nargs="?", help="YAML run config (optional with --resume)")
    server.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    _serving_args(server)
    server.add_argument("--quiet", action="store_true", help="no progress bar")
    server.add_argument("--max-examples", default="registered", metavar="N|registered|none",
                        help="the most examples a client may claim for a result (default: "
                        "registered, the count the server's partition gives it)")
    server.add_argument("--initial-parameters", choices=["server", "client"], default="server",
                        help="start from the run's seeded model (server) or from a connected "
                        "client's get_parameters (client; Flower's behaviour without "
                        "initial_parameters)")
    client = sub.add_parser("client", help="serve as a client of a fedloom server",
                            epilog=CLIENT_EPILOG + "\n" + overrides_help, formatter_class=raw)
    client.add_argument("overrides", nargs="*", help="dotted overrides of the run config")
    client.add_argument("--server", required=True, help="the server's HOST:PORT")
    client.add_argument("--client-id", required=True, help="this client's id (or ids: 0,3,5)")
    client.add_argument("--token", help="this client's token")
    client.add_argument("--token-file", help="a tokens file holding this client's token")
    _tls_args(client, server_side=False)
    client.add_argument("--config", help="this client's run config (default: the server's)")
    client.add_argument("--command", dest="train_command", metavar="CMD",
                        help="train with an external command (FEDn style): "
                        "'CMD ... {input} {output}'")
    client.add_argument("--no-bulk", action="store_true",
                        help="never open the server's bulk port: every payload in chunks")
    client.add_argument("--retry-for", type=float, default=300.0,
                        help="give up after this many seconds without a connection")
    edge = sub.add_parser("edge", help="serve as an aggregator of a hierarchy: a client of "
                          "its parent, a server for its own collaborators",
                          epilog=EDGE_EPILOG + "\n" + overrides_help, formatter_class=raw)
    edge.add_argument("config", nargs="?", help="the hierarchy's YAML run config (optional "
                      "with --resume)")
    edge.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    edge.add_argument("--node", required=True, help="which aggregator of the topology this is")
    edge.add_argument("--upstream", required=True, help="the parent's HOST:PORT")
    edge.add_argument("--upstream-token", help="this edge's token at its parent")
    edge.add_argument("--upstream-token-file", help="a tokens file holding it")
    edge.add_argument("--root-cert", help="the CA that signed the parent's certificate")
    edge.add_argument("--upstream-cert", help="this edge's certificate for its parent (mTLS)")
    edge.add_argument("--upstream-key", help="its key")
    edge.add_argument("--upstream-insecure", action="store_true",
                      help="no TLS to the parent (loopback demos and tests only)")
    edge.add_argument("--no-bulk", action="store_true", help="no bulk connection upstream")
    edge.add_argument("--retry-for", type=float, default=300.0,
                      help="give up after this many seconds without the parent")
    _serving_args(edge)
    edge.add_argument("--quiet", action="store_true", help="no progress bar")
    certs = sub.add_parser("certs", help="make a local CA, server and client certificates and "
                           "a tokens file (for demos and tests)")
    certs.add_argument("dir", type=Path)
    certs.add_argument("--clients", type=int, default=3)
    certs.add_argument("--host", action="append", help="server host name or IP (repeatable; "
                       "default localhost and 127.0.0.1)")
    certs.add_argument("--days", type=int, default=365)
    certs.set_defaults(overrides=[])
    demo = sub.add_parser("demo", help="run a demo on this machine (demo deploy: a server and "
                          "client processes on loopback, FedAvg on MNIST)")
    demo.add_argument("name", choices=["deploy"])
    demo.add_argument("overrides", nargs="*", help="dotted overrides of the demo config")
    demo.add_argument("--clients", type=int, default=3, help="client processes")
    demo.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    demo.add_argument("--tls", action="store_true", help="TLS and tokens (default: insecure "
                      "loopback)")


def _example_bound(text: str) -> int | Literal["registered"] | None:
    if text in ("registered", "none"):
        return "registered" if text == "registered" else None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"--max-examples {text!r}: give a positive number, registered or none")
    return value


def _serving_args(parser: argparse.ArgumentParser) -> None:
    """The flags of a process that serves collaborators (``server``, ``edge``)."""
    parser.add_argument("--address", default="127.0.0.1:8080", help="HOST:PORT to listen on")
    _tls_args(parser, server_side=True)
    parser.add_argument("--tokens", help="tokens file: one 'CLIENT_ID TOKEN' per line")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run")
    parser.add_argument("--min-clients", type=int, help="clients to wait for before round 1 "
                        "(default: data.num_clients)")
    parser.add_argument("--start-timeout", type=float, default=600.0,
                        help="seconds to wait for them (default 600)")
    parser.add_argument("--round-timeout", type=float, default=600.0,
                        help="round deadline in seconds (default 600)")
    parser.add_argument("--wait-for-absent", action="store_true",
                        help="keep sampled clients that are not connected in the cohort and "
                        "wait --absent-timeout for them (default: replace them by connected "
                        "ones)")
    parser.add_argument("--substitute-after", type=float, default=5.0,
                        help="seconds a sampled client that is not connected is waited for "
                        "before another takes its place (default 5)")
    parser.add_argument("--absent-timeout", type=float, default=30.0,
                        help="seconds a sampled client that is not connected is waited for")
    parser.add_argument("--close-at", type=int, help="close a round at this many results")
    parser.add_argument("--evaluate-on-clients", action="store_true",
                        help="federated evaluation on the clients' data instead of the server's")
    parser.add_argument("--max-clients", type=int, default=1000)
    parser.add_argument("--max-update-mb", type=float,
                        help="largest update per client per round (default: 4 model sizes)")
    parser.add_argument("--idle-timeout", type=float, default=60.0,
                        help="seconds of silence allowed inside a package")
    _hardening_args(parser)
    parser.add_argument("--bulk-port", type=int, default=0,
                        help="TCP port for large payloads beside the gRPC stream (TLS like the "
                        "stream; default 0: any free port; -1: none, stream everything in "
                        "chunks). Clients that cannot reach it stream in chunks")


def _hardening_args(parser: argparse.ArgumentParser) -> None:
    """What a connection, a package and a misbehaving client may cost (see ``Limits``)."""
    parser.add_argument("--handshake-timeout", type=float, default=10.0,
                        help="seconds for a connection's TLS handshake, a stream's hello and a "
                        "bulk connection's ticket (default 10)")
    parser.add_argument("--max-pending", type=int, default=256,
                        help="connections at once that have not finished their handshake")
    parser.add_argument("--max-pending-per-source", type=int, default=32,
                        help="the same, per source address (default 32)")
    parser.add_argument("--max-connections", type=int,
                        help="TCP connections at once (default: max clients + max pending, at "
                        "most half of ulimit -n)")
    parser.add_argument("--min-transfer-rate", type=float, default=64.0,
                        help="KiB/s a package must average after --transfer-grace seconds, or "
                        "it is dropped as too slow (default 64; 0: no deadline)")
    parser.add_argument("--transfer-grace", type=float, default=10.0,
                        help="seconds every package gets on top of its size's share")
    parser.add_argument("--max-violations", type=int, default=50,
                        help="rejected messages per client per --violation-window before its "
                        "stream is closed (default 50; 0: no limit)")
    parser.add_argument("--violation-window", type=float, default=60.0,
                        help="seconds (default 60)")


def _tls_args(parser: argparse.ArgumentParser, *, server_side: bool) -> None:
    parser.add_argument("--insecure", action="store_true",
                        help="no TLS (loopback demos and tests only)")
    parser.add_argument("--cert", help="this side's certificate (PEM)")
    parser.add_argument("--key", help="this side's private key (PEM)")
    if server_side:
        parser.add_argument("--client-ca", help="require client certificates signed by this CA")
    else:
        parser.add_argument("--root-cert", help="the CA certificate that signed the server's")


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC's C core logs handshakes at INFO
    for name in DEPLOY_LOGGERS:  # who connected, refused, rejected: an operator's view
        deploy_log = logging.getLogger(name)
        if deploy_log.getEffectiveLevel() > logging.INFO:
            deploy_log.setLevel(logging.INFO)
    return {"server": _server, "edge": _edge, "client": _client, "certs": _certs,
            "demo": _demo}[args.command](args)


def _server(args: argparse.Namespace) -> int:
    from fedloom.app.server import run_server

    return report(run_server(run_config(args), _server_options(args)))


def _edge(args: argparse.Namespace) -> int:
    from fedloom.app.edge import EdgeOptions, run_edge
    from fedloom.runtime.client_loop import Backoff
    from fedloom.transport.security import TlsFiles, read_tokens

    token = args.upstream_token
    if args.upstream_token_file:
        token = read_tokens(args.upstream_token_file).get(_edge_position(args))
    tls = None if args.upstream_insecure else TlsFiles(
        cert=args.upstream_cert, key=args.upstream_key, ca=args.root_cert)
    reason = run_edge(run_config(args), EdgeOptions(
        node=args.node, upstream=args.upstream, downstream=_server_options(args), token=token,
        tls=tls, insecure=args.upstream_insecure, bulk=not args.no_bulk,
        backoff=Backoff(give_up_after=args.retry_for)))
    print(f"edge {args.node}: {reason}")
    return 0


def _edge_position(args: argparse.Namespace) -> int:
    from fedloom.app.edge import parent_position
    from fedloom.topology.tree import build_tree

    cfg = run_config(args)
    if cfg.topology is None:
        from fedloom.core.errors import ConfigError

        raise ConfigError("fedloom edge needs a config with a topology section")
    tree = build_tree(cfg.topology, num_clients=cfg.data.num_clients, seed=cfg.seed)
    return parent_position(tree, args.node)


def _server_options(args: argparse.Namespace) -> ServerOptions:
    from fedloom.app.server import ServerOptions
    from fedloom.fleets.grpc import RoundPolicy
    from fedloom.transport.security import TlsFiles
    from fedloom.transport.service import Limits

    tls = None if args.insecure else TlsFiles(cert=args.cert, key=args.key, ca=args.client_ca)
    return ServerOptions(
        address=args.address, tls=tls, insecure=args.insecure, tokens=args.tokens,
        min_clients=args.min_clients, start_timeout=args.start_timeout, resume=args.resume,
        console=not args.quiet, sample_connected=not args.wait_for_absent,
        substitute_after=args.substitute_after,
        initial_parameters=getattr(args, "initial_parameters", "server"),
        max_examples=_example_bound(getattr(args, "max_examples", "registered")),
        bulk_port=None if args.bulk_port < 0 else args.bulk_port,
        policy=RoundPolicy(round_timeout=args.round_timeout, absent_timeout=args.absent_timeout,
                           close_at=args.close_at, evaluate_on_clients=args.evaluate_on_clients),
        limits=Limits(max_clients=args.max_clients, idle_timeout=args.idle_timeout,
                      max_update_bytes=None if args.max_update_mb is None
                      else int(args.max_update_mb * (1 << 20)),
                      handshake_timeout=args.handshake_timeout, max_pending=args.max_pending,
                      max_pending_per_source=args.max_pending_per_source,
                      max_connections=args.max_connections,
                      min_transfer_rate=args.min_transfer_rate * 1024,
                      transfer_grace=args.transfer_grace, max_violations=args.max_violations,
                      violation_window=args.violation_window))


def _client_ids(text: str) -> list[int]:
    from fedloom.core.errors import ConfigError

    ids = [p.strip() for p in text.split(",") if p.strip()]
    if not ids or not all(p.isdigit() for p in ids):
        raise ConfigError(f"--client-id = {text!r}: must be an id or a comma-separated list")
    return [int(p) for p in ids]


def _tokens(args: argparse.Namespace, ids: list[int]) -> dict[int, str | None]:
    from fedloom.transport.security import read_tokens

    if args.token_file:
        book = read_tokens(args.token_file)
        return {cid: book.get(cid) for cid in ids}
    token = args.token or os.environ.get("FEDLOOM_TOKEN")
    return dict.fromkeys(ids, token)


def _client(args: argparse.Namespace) -> int:
    from fedloom.app.client import ConfigClient
    from fedloom.app.config import load_config
    from fedloom.runtime.client_loop import Backoff, ClientLoop
    from fedloom.runtime.clients import Client
    from fedloom.runtime.command_client import CommandClient
    from fedloom.runtime.secagg_client import SecAggClient
    from fedloom.transport.handlers import Handlers
    from fedloom.transport.security import TlsFiles

    ids = _client_ids(args.client_id)
    tokens = _tokens(args, ids)
    client: Client
    if args.train_command:
        client = CommandClient(args.train_command)
    else:
        cfg = load_config(args.config, args.overrides) if args.config else None
        client = ConfigClient(cfg, args.overrides)
    tls = None if args.insecure else TlsFiles(cert=args.cert, key=args.key, ca=args.root_cert)

    def runner(cid: int) -> ClientLoop:
        """One connection; it can take part in secure aggregation when the server asks."""
        secure = SecAggClient(client)
        return ClientLoop(args.server, client_id=cid, client=secure, token=tokens[cid],
                          tls=tls, insecure=args.insecure, bulk=not args.no_bulk,
                          backoff=Backoff(give_up_after=args.retry_for),
                          handlers=secure.install(Handlers()))

    runners = [runner(cid) for cid in ids]
    if len(runners) == 1:
        print(f"client {ids[0]}: {runners[0].run()}")
        return 0
    errors: list[BaseException] = []

    def serve(runner: ClientLoop) -> None:
        try:
            print(f"client {runner.client_id}: {runner.run()}", flush=True)
        except BaseException as err:  # reported below; the other connections are stopped
            errors.append(err)
            for other in runners:
                other.stop()

    threads = [threading.Thread(target=serve, args=(r,), daemon=True) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return 0


def _certs(args: argparse.Namespace) -> int:
    from fedloom.transport.certs import make_certs

    files = make_certs(args.dir, clients=args.clients, days=args.days,
                       hosts=args.host or ("localhost", "127.0.0.1"))
    print(f"CA {files.ca}\nserver {files.server_cert} {files.server_key}\n"
          f"clients {' '.join(str(c) for c, _ in files.client_certs)}\ntokens {files.tokens}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from fedloom.app.demo import run_demo

    run_demo(clients=args.clients, port=args.port, tls=args.tls, overrides=args.overrides)
    return 0  # the demo's server printed the accuracy and the run directory
