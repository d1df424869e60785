"""The bulk port under a slowloris (connections dripping their ticket a byte at a time) and a slow
sender on the bulk connection: the whole ticket handshake has one deadline, one source address
holds a few handshake slots at most, and an honest client still gets the bulk path; a payload
dripping in is dropped at its transfer deadline."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch

from fedloom.core.packages import ClientFailure, ClientResult, Outcome
from fedloom.fleets.grpc import RoundPolicy
from fedloom.transport.bulk import connect_bulk
from fedloom.transport.codec import describe
from fedloom.transport.generated import fedloom_pb2 as pb
from fedloom.transport.service import Limits
from tests.loopback import RawStream, downlinks, fit_reply, thread_clients, tiny_server, wait_until

ATTACKER = "127.0.0.2"  # another loopback address: a source of its own


def _drip(port: int, count: int, closed_after: list[float], stop: threading.Event) -> None:
    """``count`` connections from ATTACKER (more than the 64 handshake slots), each sending one
    byte every 0.3 s until the server closes it; records how long each lasted."""
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), source_address=(ATTACKER, 0))
        s.setblocking(False)
        socks.append((s, time.monotonic()))
    live = list(socks)
    while live and not stop.is_set():
        for s, opened in list(live):
            try:
                if s.recv(1) == b"":
                    raise ConnectionResetError
                s.send(b"x")
            except BlockingIOError:
                s.send(b"x")
            except OSError:
                closed_after.append(time.monotonic() - opened)
                live.remove((s, opened))
                s.close()
        stop.wait(0.3)
    for s, _ in live:
        s.close()


def test_dripping_connections_are_cut_at_the_deadline_and_an_honest_client_gets_bulk(
        caplog: pytest.LogCaptureFixture) -> None:
    limits = Limits(handshake_timeout=1.0, max_pending_per_source=4)
    closed_after: list[float] = []
    stop = threading.Event()
    with tiny_server(limits=limits) as (server, _):
        attack = threading.Thread(target=_drip, args=(server.bulk_port, 70, closed_after, stop),
                                  daemon=True)
        start = time.monotonic()
        attack.start()
        time.sleep(0.5)  # the attack is under way when the honest client comes
        with thread_clients(server.port, [1]):
            assert wait_until(lambda: server.bulk_connected() == [1], 10)
            honest_after = time.monotonic() - start
        attack.join(15)
        stop.set()
    assert len(closed_after) == 70, "a dripping connection was never closed"
    # without a whole-handshake deadline a byte every 0.3 s would hold a slot forever
    assert max(closed_after) < 3.0, sorted(closed_after)[-5:]
    assert honest_after < 5
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"{ATTACKER} did not present a ticket within 1 s" in m for m in messages)
    assert any("too many connections presenting tickets" in m for m in messages)
    # the log is rate-limited per source: 70 refusals and cut-offs, a few lines
    assert len([m for m in messages if ATTACKER in m]) <= 20


def test_a_bulk_payload_dripping_in_is_dropped_at_its_transfer_deadline() -> None:
    limits = Limits(idle_timeout=5.0, min_transfer_rate=1000.0, transfer_grace=1.0)
    with (tiny_server(limits=limits, policy=RoundPolicy(round_timeout=20, absent_timeout=10))
          as (server, fleet), thread_clients(server.port, [1])):
        raw = RawStream(server.port, 0)
        welcome = raw.next().welcome
        sock = connect_bulk("127.0.0.1", welcome.bulk_port, welcome.bulk_ticket, tls=None)
        assert wait_until(lambda: server.bulk_connected() == [0, 1], 10)
        box: list[list[Outcome]] = []
        start = time.monotonic()
        worker = threading.Thread(target=lambda: box.append(
            fleet.fit(1, downlinks(1, [0, 1], server.layout))), daemon=True)
        worker.start()
        task = raw.next_header()
        header, tensors = fit_reply(task, torch.zeros(8))
        header.bulk = True
        raw.send(describe(header, tensors, lambda h: pb.ClientFrame(
            header=h).SerializeToString()))
        for _ in range(8):  # 4 of the 32 bytes every 0.5 s: 4 s for the whole payload
            try:
                sock.sendall(b"\x00" * 4)
            except OSError:
                break
            time.sleep(0.5)
        worker.join(30)
        elapsed = time.monotonic() - start
        sock.close()
        raw.close()
    slow, good = box[0]
    assert isinstance(slow, ClientFailure) and "rejected (too_slow)" in slow.message
    assert isinstance(good, ClientResult)
    assert elapsed < 8
