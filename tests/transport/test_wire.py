"""The server over real gRPC streams: bad messages, deadlines, dropouts and limits.

A hand-driven stream plays the misbehaving client; a well-behaved client on a thread shows that
everyone else is served on.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
import torch

from fedloom.core.packages import ClientFailure, ClientResult, Outcome
from fedloom.fleets.grpc import GrpcFleet, RoundPolicy
from fedloom.transport.codec import encode
from fedloom.transport.generated import fedloom_pb2 as pb
from fedloom.transport.handlers import MessageType
from fedloom.transport.service import FederationServer, Limits
from tests.loopback import (
    RawStream,
    Recorder,
    downlinks,
    fit_reply,
    thread_clients,
    tiny_server,
    wait_until,
)

Serving = tuple[FederationServer, GrpcFleet, Recorder]


@pytest.fixture(scope="module")
def serving() -> Iterator[Serving]:
    """Client 1 is always well behaved; client 0 is played by each test."""
    with tiny_server(limits=Limits(max_update_bytes=1024, idle_timeout=1.0),
                     policy=RoundPolicy(round_timeout=20, absent_timeout=10)) as (server, fleet):
        recorder = Recorder(server.handlers, MessageType.REJECTED, MessageType.CONNECTED)
        with thread_clients(server.port, [1]):
            yield server, fleet, recorder


def in_background(fn: Callable[[], list[Outcome]]) -> Callable[[], list[Outcome]]:
    box: list[list[Outcome]] = []
    thread = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    thread.start()

    def result() -> list[Outcome]:
        thread.join(60)
        return box[0]

    return result


def round_with_raw_client(serving: Serving, act: Callable[[RawStream, pb.Header], None],
                          round: int = 1) -> tuple[list[Outcome], RawStream]:
    server, fleet, _ = serving
    raw = RawStream(server.port, 0)
    fleet.wait_for_clients(2, 10)
    outcomes = in_background(lambda: fleet.fit(round, downlinks(round, [0, 1], server.layout)))
    act(raw, raw.next_header())
    result = outcomes()
    raw.close()
    return result, raw


def _frames(header: pb.Header, tensors: dict[str, torch.Tensor], chunk: int) -> list[bytes]:
    return encode(header, tensors, chunk_bytes=chunk,
                  wrap_header=lambda h: pb.ClientFrame(header=h).SerializeToString())


def _params(size: int = 8, dtype: torch.dtype = torch.float32, nan: bool = False
            ) -> torch.Tensor:
    p = torch.zeros(size, dtype=dtype)
    if nan:
        p[3] = math.nan
    return p


def _truncated(raw: RawStream, task: pb.Header) -> None:
    for f in _frames(*fit_reply(task, _params()), chunk=8)[:-1]:
        raw.send(f)
    raw.out.put(None)  # the stream ends inside the package


BAD = {
    "malformed": (lambda raw, task: raw.send(b"\xff\xff\x00 not a frame"), "malformed"),
    "truncated": (_truncated, "truncated"),
    "oversized": (lambda raw, task: raw.reply(*fit_reply(task, _params(10_000))), "oversized"),
    "nan": (lambda raw, task: raw.reply(*fit_reply(task, _params(nan=True))), "non_finite"),
    "wrong shape": (lambda raw, task: raw.reply(*fit_reply(task, _params(9))), "wrong_shape"),
    "wrong dtype": (lambda raw, task: raw.reply(*fit_reply(task, _params(dtype=torch.float64))),
                    "bad_dtype"),
    "zero examples": (lambda raw, task: raw.reply(*fit_reply(task, _params(), num_examples=0)),
                      "bad_value"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_update_is_rejected_by_name_and_the_others_are_served(
        serving: Serving, case: str, caplog: pytest.LogCaptureFixture) -> None:
    act, reason = BAD[case]
    before = len(serving[2].of(MessageType.REJECTED))
    outcomes, _ = round_with_raw_client(serving, act)
    bad, good = outcomes
    assert isinstance(bad, ClientFailure) and bad.stage == "validate"
    assert f"rejected ({reason})" in bad.message
    assert isinstance(good, ClientResult) and torch.equal(good.params, torch.ones(8))
    assert serving[2].of(MessageType.REJECTED)[before].detail["reason"] == reason
    assert any(f"client 0: rejected ({reason})" in r.getMessage() for r in caplog.records)
    # and the server serves the next round as if nothing happened
    assert all(isinstance(o, ClientResult) for o in serving[1].fit(2, downlinks(
        2, [1], serving[0].layout)))


def test_a_reply_to_no_open_task_is_rejected_and_the_stream_goes_on(serving: Serving) -> None:
    def act(raw: RawStream, task: pb.Header) -> None:
        header, tensors = fit_reply(task, _params())
        header.task_id = 10_000
        raw.reply(header, tensors)
        raw.reply(*fit_reply(task, _params() + 5))

    outcomes, raw = round_with_raw_client(serving, act)
    assert torch.equal(outcomes[0].params, torch.full((8,), 5.0))  # type: ignore[union-attr]
    assert serving[2].of(MessageType.REJECTED)[-1].detail["reason"] == "unknown_task"
    assert raw.status == grpc.StatusCode.OK


def test_a_client_that_stalls_mid_package_is_cut_off_after_the_idle_timeout(
        serving: Serving) -> None:
    def act(raw: RawStream, task: pb.Header) -> None:
        raw.send(_frames(*fit_reply(task, _params()), chunk=8)[0])  # the header, no payload

    start = time.monotonic()
    outcomes, _ = round_with_raw_client(serving, act)
    assert isinstance(outcomes[0], ClientFailure) and "idle" in outcomes[0].message
    assert time.monotonic() - start < 10


def test_a_client_that_disconnects_is_dropped_from_the_round_at_once(serving: Serving) -> None:
    start = time.monotonic()
    outcomes, _ = round_with_raw_client(serving, lambda raw, task: raw.close())
    assert isinstance(outcomes[0], ClientFailure) and outcomes[0].stage == "disconnect"
    assert isinstance(outcomes[1], ClientResult)
    assert time.monotonic() - start < 10  # not the 20 s deadline


def test_thousands_of_random_and_mutated_frames_leave_the_server_serving(
        serving: Serving) -> None:
    server, fleet, recorder = serving
    rng = random.Random(0)
    good = _frames(pb.Header(kind=pb.FIT_REPLY, task_id=1, num_examples=2),
                   {"params": _params(), "extras/x": torch.ones(2)}, chunk=6)
    before = len(recorder.of(MessageType.REJECTED))
    sent = streams = 0
    while sent < 3000:
        streams += 1
        raw = RawStream(server.port, 0, hello=rng.random() < 0.95)
        for _ in range(rng.randint(0, 20)):  # whole packages answering no open task
            for frame in good:
                raw.send(frame)
                sent += 1
        for _ in range(rng.randint(1, 60)):  # then damaged and random frames
            frame = bytearray(rng.choice(good))
            op = rng.random()
            if op < 0.4 and frame:
                frame[rng.randrange(len(frame))] ^= rng.randrange(1, 256)
            elif op < 0.5:
                frame = bytearray(rng.randbytes(rng.randint(0, 50)))
            elif op < 0.6:
                del frame[rng.randrange(len(frame) + 1):]
            raw.send(bytes(frame))
            sent += 1
        raw.close()
    rejected = len(recorder.of(MessageType.REJECTED)) - before
    print(f"{sent} frames on {streams} streams: {rejected} rejections")
    assert rejected > streams / 2
    outcomes = fleet.fit(3, downlinks(3, [1], server.layout))
    assert isinstance(outcomes[0], ClientResult)


def test_the_round_closes_at_its_deadline_and_a_late_reply_is_dropped() -> None:
    with tiny_server(policy=RoundPolicy(round_timeout=1.0)) as (server, fleet):
        recorder = Recorder(server.handlers, MessageType.REJECTED)
        with thread_clients(server.port, [1]):
            raw = RawStream(server.port, 0)
            fleet.wait_for_clients(2, 10)
            outcomes = in_background(lambda: fleet.fit(1, downlinks(1, [0, 1], server.layout)))
            task = raw.next_header()
            late, good = outcomes()
            raw.reply(*fit_reply(task, _params()))  # after the deadline
            assert isinstance(late, ClientFailure) and late.stage == "deadline"
            assert isinstance(good, ClientResult)
            nxt = fleet.fit(2, downlinks(2, [1], server.layout))
            assert isinstance(nxt[0], ClientResult) and not recorder.of(MessageType.REJECTED)
            raw.close()


def test_the_round_closes_when_close_at_results_are_in() -> None:
    with (tiny_server(policy=RoundPolicy(round_timeout=30, close_at=1)) as (server, fleet),
          thread_clients(server.port, [1])):
        raw = RawStream(server.port, 0)  # never answers
        fleet.wait_for_clients(2, 10)
        start = time.monotonic()
        silent, good = fleet.fit(1, downlinks(1, [0, 1], server.layout))
        assert isinstance(good, ClientResult) and isinstance(silent, ClientFailure)
        assert "closed at 1 results" in silent.message and time.monotonic() - start < 10
        raw.close()


def test_a_sampled_client_that_connects_late_is_waited_for_then_given_up_on() -> None:
    with tiny_server(policy=RoundPolicy(round_timeout=30, absent_timeout=1.5)) as (
            server, fleet):
        outcomes = in_background(lambda: fleet.fit(1, downlinks(1, [0, 1], server.layout)))
        time.sleep(0.3)
        with thread_clients(server.port, [1]):
            absent, late = outcomes()
        assert isinstance(late, ClientResult)
        assert isinstance(absent, ClientFailure) and absent.stage == "connect"


def test_limits_refuse_extra_clients_and_a_reconnect_instruction_is_obeyed() -> None:
    with tiny_server(limits=Limits(max_clients=1)) as (server, fleet):
        connected = Recorder(server.handlers, MessageType.CONNECTED)
        with thread_clients(server.port, [1]):
            fleet.wait_for_clients(1, 10)
            extra = RawStream(server.port, 0)
            assert extra.done.wait(10) and extra.status == grpc.StatusCode.RESOURCE_EXHAUSTED
            server.reconnect([1], seconds=0.2)
            assert wait_until(lambda: len(connected.of(MessageType.CONNECTED)) == 2)
            assert isinstance(fleet.fit(1, downlinks(1, [1], server.layout))[0], ClientResult)
