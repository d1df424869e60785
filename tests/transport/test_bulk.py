"""The bulk connection: large payloads beside the stream, the same answers as chunk frames, over
TLS too; wrong tickets, bulk headers without a bulk connection, truncated and NaN bulk payloads
are refused and the server keeps serving."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
import torch

from fedloom.core.errors import TransportError
from fedloom.core.layout import LayoutEntry, ParamLayout
from fedloom.core.packages import ClientFailure, ClientResult
from fedloom.fleets.grpc import RoundPolicy
from fedloom.runtime import client_loop as runner_module
from fedloom.transport.bulk import (
    BULK_MIN_BYTES,
    TICKET_BYTES,
    connect_bulk,
    recv_exact,
    send_tensors,
)
from fedloom.transport.certs import make_certs
from fedloom.transport.generated import fedloom_pb2 as pb
from fedloom.transport.security import TlsFiles
from fedloom.transport.service import Limits
from tests.loopback import (
    RawStream,
    downlinks,
    fit_reply,
    thread_clients,
    tiny_server,
    wait_until,
)

SIZE = BULK_MIN_BYTES // 4 * 3  # float32 values: a 3 MiB model, over the bulk threshold
LAYOUT = ParamLayout(entries=(LayoutEntry(name="w", shape=(SIZE,), dtype=torch.float32,
                                          offset=0, trainable=True),))
POLICY = RoundPolicy(round_timeout=30, absent_timeout=20)


def _params(rnd: int) -> torch.Tensor:
    return torch.arange(SIZE, dtype=torch.float32) * rnd


@pytest.mark.parametrize("bulk", [True, False])
def test_large_payloads_give_the_same_results_with_and_without_the_bulk_connection(
        bulk: bool) -> None:
    with (tiny_server(layout=LAYOUT, policy=POLICY, bulk_port=0 if bulk else None)
          as (server, fleet), thread_clients(server.port, [0, 1])):
        fleet.wait_for_clients(2, 20)
        assert wait_until(lambda: server.bulk_connected() == ([0, 1] if bulk else []))
        for rnd in (1, 2, 3):
            tasks = [type(t)(round=rnd, client_id=t.client_id, params=_params(rnd),
                             config=t.config) for t in downlinks(rnd, [0, 1], LAYOUT)]
            outcomes = fleet.fit(rnd, tasks)
            assert all(isinstance(o, ClientResult) and torch.equal(o.params, _params(rnd) + 1)
                       for o in outcomes), outcomes
        assert server.bulk_connected() == ([0, 1] if bulk else [])


def test_a_client_can_decline_the_bulk_connection_or_fail_to_reach_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args: object, **kwargs: object) -> socket.socket:
        raise TransportError("cannot reach the bulk port (test)")

    with tiny_server(layout=LAYOUT, policy=POLICY) as (server, fleet):
        with thread_clients(server.port, [0], bulk=False):
            fleet.wait_for_clients(1, 20)
            (result,) = fleet.fit(1, downlinks(1, [0], LAYOUT, value=2.0))
            assert isinstance(result, ClientResult) and float(result.params[-1]) == 3.0
            assert server.bulk_connected() == []
        monkeypatch.setattr(runner_module, "connect_bulk", unreachable)
        with thread_clients(server.port, [1]):
            fleet.wait_for_clients(1, 20)
            assert wait_until(lambda: server.connected() == [1])
            (result,) = fleet.fit(2, downlinks(2, [1], LAYOUT, value=5.0))
            assert isinstance(result, ClientResult) and float(result.params[0]) == 6.0
            assert server.bulk_connected() == []


def test_the_bulk_connection_under_mutual_tls(tmp_path: Path) -> None:
    certs = make_certs(tmp_path, clients=1)
    tls = TlsFiles(cert=str(certs.server_cert), key=str(certs.server_key), ca=str(certs.ca))
    client_tls = TlsFiles(ca=str(certs.ca), cert=str(certs.client_certs[0][0]),
                          key=str(certs.client_certs[0][1]))
    with (tiny_server(layout=LAYOUT, policy=POLICY, insecure=False, tls=tls) as (server, fleet),
          thread_clients(server.port, [0], insecure=False, tls=client_tls)):
        fleet.wait_for_clients(1, 20)
        assert wait_until(lambda: server.bulk_connected() == [0])
        (result,) = fleet.fit(1, [type(t)(round=1, client_id=0, params=_params(1),
                                          config=t.config) for t in downlinks(1, [0], LAYOUT)])
        assert isinstance(result, ClientResult) and torch.equal(result.params, _params(1) + 1)
        # a socket without the client certificate does not get past the TLS handshake
        with pytest.raises(TransportError):
            connect_bulk("127.0.0.1", server.bulk_port, bytes(TICKET_BYTES),
                         tls=TlsFiles(ca=str(certs.ca)))


def test_a_wrong_ticket_is_refused() -> None:
    with (tiny_server(layout=LAYOUT, policy=POLICY) as (server, _),
          pytest.raises(TransportError, match="bulk port")):
        connect_bulk("127.0.0.1", server.bulk_port, bytes(TICKET_BYTES), tls=None)


def test_a_ticket_opens_one_bulk_connection_only() -> None:
    with tiny_server(layout=LAYOUT, policy=POLICY) as (server, _):
        stream = RawStream(server.port, 0)
        welcome = stream.next().welcome
        first = connect_bulk("127.0.0.1", welcome.bulk_port, welcome.bulk_ticket, tls=None)
        assert wait_until(lambda: server.bulk_connected() == [0])
        with pytest.raises(TransportError):
            connect_bulk("127.0.0.1", welcome.bulk_port, welcome.bulk_ticket, tls=None)
        first.close()
        stream.close()


def _bulk_stream(port: int, client_id: int) -> tuple[RawStream, socket.socket]:
    """A hand-driven client with its bulk connection open."""
    stream = RawStream(port, client_id)
    welcome = stream.next().welcome
    assert welcome.bulk_port and len(welcome.bulk_ticket) == TICKET_BYTES
    return stream, connect_bulk("127.0.0.1", welcome.bulk_port, welcome.bulk_ticket, tls=None)


def _task(stream: RawStream, sock: socket.socket) -> pb.Header:
    """The next fit task, its bulk payload read off the bulk connection."""
    header = stream.next_header()
    assert header.bulk and header.payload_bytes == SIZE * 4
    recv_exact(sock, memoryview(bytearray(header.payload_bytes)))
    return header


@pytest.mark.parametrize("case", ["truncated", "nan", "no_bulk_connection"])
def test_bad_bulk_replies_are_refused_and_the_others_are_served(case: str) -> None:
    with (tiny_server(layout=LAYOUT, policy=POLICY, limits=Limits(idle_timeout=5))
          as (server, fleet), thread_clients(server.port, [1])):
        if case == "no_bulk_connection":
            stream, sock = RawStream(server.port, 0), None
            stream.next()  # the welcome
        else:
            stream, sock = _bulk_stream(server.port, 0)
        fleet.wait_for_clients(2, 20)
        assert wait_until(lambda: server.bulk_connected() == ([1] if sock is None else [0, 1]))
        tasks = downlinks(1, [0, 1], LAYOUT, value=1.0)
        box: dict[str, object] = {}
        fitting = threading.Thread(target=lambda: box.update(out=fleet.fit(1, tasks)))
        fitting.start()
        task = stream.next_header() if sock is None else _task(stream, sock)
        header, _ = fit_reply(task, torch.ones(SIZE))
        header.bulk = True
        header.payload_bytes = SIZE * 4
        header.tensors.append(pb.TensorSpec(name="params", dtype="float32", shape=[SIZE],
                                            nbytes=SIZE * 4))
        stream.send(pb.ClientFrame(header=header).SerializeToString())
        if case == "nan":
            bad = torch.ones(SIZE)
            bad[7] = float("nan")
            assert sock is not None
            send_tensors(sock, [bad])
        elif case == "truncated":
            assert sock is not None
            sock.sendall(bytes(1000))
            sock.close()
        fitting.join(timeout=40)
        outcomes = box["out"]
        assert isinstance(outcomes, list)
        bad_one, good = outcomes
        assert isinstance(bad_one, ClientFailure), bad_one
        assert isinstance(good, ClientResult) and float(good.params[0]) == 2.0
        words = {"nan": "non_finite", "truncated": "truncated", "no_bulk_connection": "unexpected"}
        assert words[case] in bad_one.message, bad_one.message
        # the server keeps serving the good client
        (again,) = fleet.fit(2, downlinks(2, [1], LAYOUT, value=3.0))
        assert isinstance(again, ClientResult) and float(again.params[0]) == 4.0
        # a bad value costs the package, not the stream; broken framing costs the stream
        assert (0 in server.connected()) == (case == "nan")
        stream.close()
        if sock is not None:
            sock.close()


def test_many_clients_move_large_payloads_at_once() -> None:
    """Twenty clients, each round every one of them downloads and uploads a 3 MiB model on its
    bulk connection at the same time: all answers arrive and are right."""
    ids = list(range(20))
    with (tiny_server(layout=LAYOUT, policy=POLICY, limits=Limits(max_clients=20))
          as (server, fleet), thread_clients(server.port, ids)):
        fleet.wait_for_clients(20, 30)
        assert wait_until(lambda: server.bulk_connected() == ids)
        for rnd in (1, 2):
            tasks = [type(t)(round=rnd, client_id=t.client_id, params=_params(rnd),
                             config=t.config) for t in downlinks(rnd, ids, LAYOUT)]
            outcomes = fleet.fit(rnd, tasks)
            assert [o.client_id for o in outcomes] == ids
            assert all(isinstance(o, ClientResult) and torch.equal(o.params, _params(rnd) + 1)
                       for o in outcomes)
