"""Hostile clients on a real stream: forged log lines, floods of bad replies, poisoned metrics and
slow senders. Each attack is bounded and shows the server held: the offender named in the log, its
stream closed where that is the answer, the honest client served."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
import torch

from fedloom.core.packages import ClientFailure, ClientResult, Outcome
from fedloom.fleets.grpc import GrpcFleet, RoundPolicy
from fedloom.transport.codec import MessageRejected, Rejection, check_content
from fedloom.transport.conduct import Conduct, Throttle, clean
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

FORGED = "oops\n2031-01-01 12:00:00 WARNING fedloom.app.server: FORGED admin logged in"
Serving = tuple[FederationServer, GrpcFleet, Recorder]


@pytest.fixture
def serving() -> Iterator[Serving]:
    limits = Limits(idle_timeout=5.0, min_transfer_rate=1000.0, transfer_grace=1.0,
                    max_violations=50, violation_window=60.0)
    with tiny_server(limits=limits, policy=RoundPolicy(round_timeout=20, absent_timeout=10)
                     ) as (server, fleet):
        recorder = Recorder(server.handlers, MessageType.REJECTED, MessageType.REFUSED)
        with thread_clients(server.port, [1]):
            yield server, fleet, recorder


def _round(serving: Serving, raw: RawStream, round: int = 1) -> tuple[list[Outcome], pb.Header]:
    """Round ``round`` with raw client 0 and honest client 1; returns the outcomes once the raw
    client got its task and the test acted (the caller acts in ``raw.act``)."""
    server, fleet, _ = serving
    fleet.wait_for_clients(2, 10)
    box: list[list[Outcome]] = []
    thread = threading.Thread(target=lambda: box.append(fleet.fit(
        round, downlinks(round, [0, 1], server.layout))), daemon=True)
    thread.start()
    task = raw.next_header()
    raw.act(task)  # type: ignore[attr-defined]
    thread.join(30)
    return box[0], task


def _with_metric(task: pb.Header, name: str, total: float, weight: float
                 ) -> tuple[pb.Header, dict[str, torch.Tensor]]:
    header, tensors = fit_reply(task, torch.zeros(8))
    header.metrics[name].CopyFrom(pb.Metric(total=total, weight=weight))
    return header, tensors


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("fedloom.transport")]


# ---- item 7: log forging and log floods --------------------------------------------------------

def test_clean_escapes_control_characters_and_bounds_length() -> None:
    assert clean("a\nb\r\x1b[31m\u2028c") == "a\\nb\\r\\x1b[31m\\u2028c"
    long = clean("x" * 10_000)
    assert len(long) < 400 and long.endswith("(10000 characters)")


def test_a_failure_reason_with_a_newline_cannot_forge_a_log_line(
        serving: Serving, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    raw = RawStream(serving[0].port, 0)
    raw.act = lambda task: raw.reply(pb.Header(  # type: ignore[attr-defined]
        task_id=task.task_id, kind=pb.FAILURE, round=task.round, client_id=0, reason=FORGED), {})
    (failure, good), _ = _round(serving, raw)
    raw.close()
    assert isinstance(failure, ClientFailure) and "\n" not in failure.message
    assert "oops\\n2031-01-01" in failure.message  # escaped, not lost
    assert isinstance(good, ClientResult)
    # the round loop logs failure messages; nothing a client sent puts a line break in a record
    assert not any("\n" in line for line in _lines(caplog))


def test_a_rejected_name_with_a_newline_is_logged_on_one_line(
        serving: Serving, caplog: pytest.LogCaptureFixture) -> None:
    raw = RawStream(serving[0].port, 0)
    raw.act = lambda task: raw.reply(  # type: ignore[attr-defined]
        *_with_metric(task, FORGED, 1.0, 1.0))
    (bad, _), _ = _round(serving, raw)
    raw.close()
    assert isinstance(bad, ClientFailure) and "rejected (bad_value)" in bad.message
    rejected = [line for line in _lines(caplog) if "client 0: rejected" in line]
    assert rejected and not any("\n" in line for line in rejected)


def test_ten_thousand_replies_for_no_task_log_a_few_lines_and_cost_the_stream(
        serving: Serving, caplog: pytest.LogCaptureFixture) -> None:
    server, fleet, recorder = serving
    raw = RawStream(server.port, 0)
    assert wait_until(lambda: 0 in server.connected(), 10)
    frame = pb.ClientFrame(header=pb.Header(task_id=987_654, kind=pb.FIT_REPLY, round=1,
                                            client_id=0, num_examples=1)).SerializeToString()
    start = time.monotonic()
    for _ in range(10_000):
        raw.send(frame)
    assert raw.done.wait(20), "the flooding stream was not closed"
    assert time.monotonic() - start < 20
    assert raw.status == grpc.StatusCode.INVALID_ARGUMENT
    assert "too_many_violations" in raw.details
    lines = _lines(caplog)
    assert len([line for line in lines if line.startswith("client 0:")]) <= 10
    assert any("client 0: rejected (too_many_violations)" in line for line in lines)
    assert len(recorder.of(MessageType.REJECTED)) <= 60  # it was cut off after 51
    raw.close()
    # it is refused while its window lasts; the honest client is served meanwhile
    again = RawStream(server.port, 0)
    assert again.done.wait(10) and again.status == grpc.StatusCode.UNAVAILABLE
    assert "broke the protocol" in again.details
    again.close()
    (result,) = fleet.fit(1, downlinks(1, [1], server.layout))
    assert isinstance(result, ClientResult)


def test_a_throttle_lets_a_burst_through_and_counts_the_rest() -> None:
    now = [0.0]
    throttle = Throttle(burst=2, window=10.0, clock=lambda: now[0])
    assert [throttle.allow("k")[0] for _ in range(5)] == [True, True, False, False, False]
    now[0] = 11.0
    assert throttle.allow("k") == (True, 3)  # the next line says 3 were held back
    conduct = Conduct(max_violations=2, window=10.0, clock=lambda: now[0])
    assert [conduct.violation(7) for _ in range(3)] == [False, False, True]
    assert conduct.over(7) and not conduct.over(8)
    now[0] = 22.0
    assert not conduct.over(7)


# ---- item 8: metrics that would corrupt a round's numbers ---------------------------------

@pytest.mark.parametrize(("total", "weight", "reason"), [
    (1.7e308, 0.0, Rejection.BAD_VALUE), (1.0, -1.0, Rejection.BAD_VALUE),
    (5.0, 0.0, Rejection.BAD_VALUE), (1e200, 1.0, Rejection.BAD_VALUE),
    (math.inf, 1.0, Rejection.NON_FINITE), (1.0, math.nan, Rejection.NON_FINITE),
])
def test_a_metric_with_weight_at_most_zero_or_a_huge_total_is_rejected(
        total: float, weight: float, reason: Rejection) -> None:
    header = pb.Header(kind=pb.FIT_REPLY, metrics={"train_loss": pb.Metric(total=total,
                                                                           weight=weight)})
    with pytest.raises(MessageRejected) as err:
        check_content(header)
    assert err.value.reason == reason and "train_loss" in err.value.detail


def test_an_empty_metric_and_an_ordinary_one_pass() -> None:
    check_content(pb.Header(kind=pb.FIT_REPLY, metrics={
        "empty": pb.Metric(total=0.0, weight=0.0), "loss": pb.Metric(total=2.5, weight=5.0)}))


def test_a_fit_reply_with_a_zero_weight_metric_is_rejected_and_the_round_goes_on(
        serving: Serving) -> None:
    raw = RawStream(serving[0].port, 0)
    raw.act = lambda task: raw.reply(  # type: ignore[attr-defined]
        *_with_metric(task, "train_loss", 1.7e308, 0.0))
    (bad, good), _ = _round(serving, raw)
    raw.close()
    assert isinstance(bad, ClientFailure) and "rejected (bad_value)" in bad.message
    assert "weight 0.0" in bad.message
    assert isinstance(good, ClientResult) and good.metrics["train_loss"].weight > 0


# ---- item 6: a slow sender ----------------------------------------------------------------------

def test_a_slow_sender_is_dropped_at_its_transfer_deadline_not_the_round_timeout(
        serving: Serving, caplog: pytest.LogCaptureFixture) -> None:
    """32 bytes at 1000 B/s after a 1 s grace: due 1.03 s after the header. The client sends an
    8-byte chunk every 0.6 s (never idle for the 5 s idle timeout): the package is dropped as
    too slow after about a second, and the 20 s round closes at once."""
    raw = RawStream(serving[0].port, 0)
    stop = threading.Event()

    def drip(task: pb.Header) -> None:
        header, tensors = fit_reply(task, torch.zeros(8))
        from fedloom.transport.codec import encode

        frames = encode(header, tensors, chunk_bytes=8,
                        wrap_header=lambda h: pb.ClientFrame(header=h).SerializeToString())
        raw.send(frames[0])

        def rest() -> None:
            for f in frames[1:]:
                if stop.wait(0.6):
                    return
                raw.send(f)

        threading.Thread(target=rest, daemon=True).start()

    raw.act = drip  # type: ignore[attr-defined]
    start = time.monotonic()
    (slow, good), _ = _round(serving, raw)
    elapsed = time.monotonic() - start
    stop.set()
    raw.close()
    assert isinstance(slow, ClientFailure) and "rejected (too_slow)" in slow.message
    assert isinstance(good, ClientResult)
    assert elapsed < 6, f"the round took {elapsed:.1f} s"
    assert any("client 0: rejected (too_slow)" in line for line in _lines(caplog))
