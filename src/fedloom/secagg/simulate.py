"""The protocol in one process: clients and server exchange the very messages a deployment
sends, with clients dropping out at any stage, and the cost of each stage measured.

Example:
    >>> setup = RoundSetup.make(SecAggConfig(enabled=True, threshold=2), cohort=[0, 1, 2],
    ...                         round=1, seed=0, update_size=1)
    >>> inputs = {c: encode(torch.tensor([0.5]), 1, setup.quantizer) for c in (0, 1, 2)}
    >>> out = run_in_memory(setup, inputs, drop={Stage.MASKED_INPUT: [2]})
    >>> out.sum.count, out.sum.clients
    (2, (0, 1))
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from fedloom.core.errors import ClientError
from fedloom.secagg.client import ClientSession
from fedloom.secagg.graph import RoundSetup
from fedloom.secagg.messages import PROTOCOL_STAGES, Content, Stage, content_bytes
from fedloom.secagg.ring import Ring
from fedloom.secagg.server import SecureSum, ServerSession


@dataclass(slots=True, kw_only=True)
class StageCost:
    """One stage's cost: seconds the server spent on its replies, seconds all clients spent
    answering (summed, and the slowest), and payload bytes sent down and up (totals)."""

    stage: Stage
    server_seconds: float = 0.0
    client_seconds: float = 0.0
    slowest_client_seconds: float = 0.0
    bytes_down: int = 0
    bytes_up: int = 0
    clients: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class InMemoryRound:
    """A simulated round: the sum, the cost of each stage, and who dropped where and why."""

    sum: SecureSum
    costs: list[StageCost]
    dropped: Mapping[int, tuple[Stage, str]] = field(default_factory=dict)


def run_in_memory(setup: RoundSetup, inputs: Mapping[int, Ring], *,
                  drop: Mapping[Stage, Collection[int]] | None = None) -> InMemoryRound:
    """One round over ``inputs`` (each cohort client's ring vector); the clients in
    ``drop[stage]`` stop answering from that stage on. Raises
    :class:`~fedloom.core.errors.RoundAborted` when the round cannot finish."""
    drop = drop or {}
    sessions = {c: ClientSession(c) for c in setup.cohort}
    for c, vector in inputs.items():
        sessions[c].set_input(vector)
    server = ServerSession(setup)
    gone: set[int] = set()
    costs: list[StageCost] = []
    requests: dict[int, Content] = server.advertise_requests()
    collect = {Stage.ADVERTISE_KEYS: server.collect_keys, Stage.SHARE_KEYS: server.collect_shares,
               Stage.MASKED_INPUT: server.collect_masked}
    for stage in PROTOCOL_STAGES:
        cost = StageCost(stage=stage, bytes_down=sum(map(content_bytes, requests.values())))
        gone |= set(drop.get(stage, ()))
        replies = {}
        for c, message in requests.items():
            if c in gone:
                continue
            start = time.perf_counter()
            try:
                replies[c] = sessions[c].handle(stage, message)
            except ClientError:
                gone.add(c)  # a client that refuses says nothing more this round
                continue
            spent = time.perf_counter() - start
            cost.client_seconds += spent
            cost.slowest_client_seconds = max(cost.slowest_client_seconds, spent)
        cost.bytes_up = sum(map(content_bytes, replies.values()))
        cost.clients = len(replies)
        costs.append(cost)
        start = time.perf_counter()
        try:
            if stage == Stage.UNMASK:
                result = server.collect_unmask(replies)
            else:
                requests = collect[stage](replies)
        finally:
            cost.server_seconds = time.perf_counter() - start
    return InMemoryRound(sum=result, costs=costs, dropped=dict(server.dropped))


__all__ = ["InMemoryRound", "StageCost", "run_in_memory"]
