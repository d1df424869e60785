"""Secure aggregation over gRPC on loopback: the server never holds an individual update;
clients lost mid-protocol are recovered down to the threshold, and below it the round aborts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
import torch

from fedloom.core.errors import ClientError, RoundAborted
from fedloom.core.packages import ClientResult
from fedloom.fleets.base import meter_of
from fedloom.fleets.grpc import RoundPolicy
from fedloom.fleets.secagg_grpc import GrpcSecAggFleet
from fedloom.runtime.clients import FunctionClient
from fedloom.runtime.secagg_client import PREFIX, SecAggClient
from fedloom.secagg import Quantizer, SecAggConfig, Stage, decode_sum, encode
from fedloom.secagg.ring import add
from fedloom.transport.handlers import Handlers, Message
from fedloom.transport.sessions import Answer
from tests.loopback import downlinks, thread_clients, tiny_layout, tiny_server

IDS = [0, 1, 2, 3, 4]


def delta(cid: int) -> torch.Tensor:
    return 0.01 * (cid + 1) * torch.arange(1.0, 9.0)


def fit_for(cid: int):  # type: ignore[no-untyped-def]
    def fit(params: list[torch.Tensor], config: dict[str, object]):  # type: ignore[no-untyped-def]
        layout = tiny_layout()
        flat = layout.flatten(dict(zip(layout.names, params, strict=True))) + delta(cid)
        return list(layout.unflatten(flat).values()), 4 + cid, {}
    return fit


def lost_at(stage: Stage, handlers: Handlers, how: str) -> None:
    """Make this client fail (``error``) or go silent (``stall``) at ``stage``."""
    def gone(message: Message) -> None:
        if how == "stall":
            time.sleep(4.0)
        raise ClientError("killed")
    handlers.register_handlers(PREFIX + stage.value, gone)


@contextmanager
def secure_clients(port: int, lost: dict[int, tuple[Stage, str]]) -> Iterator[None]:
    with ExitStack() as stack:
        for cid in IDS:
            client = SecAggClient(FunctionClient(fit_for(cid)))
            handlers = client.install(Handlers())
            if cid in lost:
                lost_at(lost[cid][0], handlers, lost[cid][1])
            stack.enter_context(thread_clients(port, [cid], client=client, handlers=handlers))
        yield


def expected(ids: list[int], q: Quantizer) -> torch.Tensor:
    total = encode(torch.zeros(8), 1, q) * 0
    for c in ids:
        total = add(total, encode(delta(c).double(), 4 + c, q), q.ring_bits)
    summed, count = decode_sum(total, q)
    return (summed / count).float()


def record(server) -> list[Answer]:  # type: ignore[no-untyped-def]
    """Everything the server's network side hands the fleet, kept."""
    seen: list[Answer] = []
    original = server.inbox.get

    def get(*args, **kwargs):  # type: ignore[no-untyped-def]
        item = original(*args, **kwargs)
        if isinstance(item, Answer):
            seen.append(item)
        return item
    server.inbox.get = get
    return seen


@pytest.mark.integration
@pytest.mark.parametrize("lost", [
    {},
    {4: (Stage.MASKED_INPUT, "error"), 1: (Stage.SHARE_KEYS, "error")},
    {2: (Stage.MASKED_INPUT, "stall")},
])
def test_the_server_learns_only_the_sum(lost: dict[int, tuple[Stage, str]]) -> None:
    cfg = SecAggConfig(enabled=True, threshold=3)
    with tiny_server(policy=RoundPolicy(round_timeout=2.5, absent_timeout=20)) as (server,
                                                                                   fleet):
        seen = record(server)
        with secure_clients(server.port, lost):
            fleet.wait_for_clients(len(IDS), 10)
            secure = GrpcSecAggFleet(fleet, cfg, seed=0)
            out = secure.fit(1, downlinks(1, IDS, tiny_layout()))
    survivors = [c for c in IDS if c not in lost]
    results = [o for o in out if isinstance(o, ClientResult)]
    assert [r.client_id for r in results] == survivors
    mean = expected(survivors, Quantizer.of(cfg))
    assert all(torch.allclose(r.params, mean, atol=1e-6, rtol=0) for r in results)
    assert results[0].num_examples == sum(4 + c for c in survivors)
    assert {o.client_id: o.stage for o in out if not isinstance(o, ClientResult)} == {
        c: f"secagg/{s}" for c, (s, _) in lost.items()}
    # nothing the server received holds an update or an unmasked input
    q = Quantizer.of(cfg)
    secrets = [delta(c) for c in IDS] + [torch.from_numpy(encode(delta(c).double(), 4 + c, q)
                                                          .view("int64")) for c in IDS]
    assert seen and all(a.result is None for a in seen)
    for a in seen:
        for value in (a.message.content.values() if a.message else ()):
            if isinstance(value, torch.Tensor):
                assert not any(value.shape == s.shape and torch.equal(value.to(s.dtype), s)
                               for s in secrets)
    assert [c.stage for c in secure.costs[1]] == list(Stage)
    # it measures its own rounds (user messages, which the gRPC fleet's fit meter never sees)
    moved = secure.traffic()
    assert meter_of(secure) is secure and meter_of(fleet) is fleet
    assert moved.bytes_down > len(IDS) * 8 * 4  # at least the model to everyone
    assert (moved.bytes_down, moved.bytes_up) == (sum(c.bytes_down for c in secure.costs[1]),
                                                 sum(c.bytes_up for c in secure.costs[1]))
    assert fleet.traffic().bytes_down == 0


@pytest.mark.integration
def test_below_the_threshold_the_round_aborts_with_the_reason() -> None:
    cfg = SecAggConfig(enabled=True, threshold=4)
    lost = {0: (Stage.MASKED_INPUT, "error"), 3: (Stage.MASKED_INPUT, "error")}
    with tiny_server() as (server, fleet), secure_clients(server.port, lost):
        fleet.wait_for_clients(len(IDS), 10)
        secure = GrpcSecAggFleet(fleet, cfg, seed=0)
        with pytest.raises(RoundAborted, match="only 3 clients are left, the threshold is 4"):
            secure.fit(1, downlinks(1, IDS, tiny_layout()))
        # the next round proceeds with the clients that are still there
        out = GrpcSecAggFleet(fleet, SecAggConfig(enabled=True, threshold=3), seed=0).fit(
            2, downlinks(2, [1, 2, 4], tiny_layout()))
    assert [o.client_id for o in out if isinstance(o, ClientResult)] == [1, 2, 4]

