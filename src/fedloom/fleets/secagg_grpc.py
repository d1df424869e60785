"""Secure aggregation over gRPC: deployed clients train, keep their update, and send only a
masked vector; the server learns the cohort's sum.

Each round is five user-message exchanges with the cohort (:meth:`GrpcFleet.request_each`):
``secagg.train`` (the global model and the client config, the same for everyone; the reply
says only that the client trained), then ``secagg.advertise_keys``, ``secagg.share_keys``,
``secagg.masked_input`` and ``secagg.unmask``, each message built by the
:class:`~fedloom.secagg.ServerSession` for its client. A client that is gone, too slow (the
round policy's timeout) or answers badly is dropped at that stage; the protocol recovers it
while ``threshold`` clients are left, and aborts the round with the reason otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import torch

from fedloom.core.packages import ClientFailure, Downlink, Outcome
from fedloom.core.traffic import Traffic
from fedloom.fleets.base import WrappedFleet
from fedloom.fleets.grpc import GrpcFleet
from fedloom.fleets.secagg import common_params, log_costs, secure_outcomes, setup_round
from fedloom.secagg import PROTOCOL_STAGES, SecAggConfig, ServerSession, Stage, StageCost
from fedloom.secagg.messages import Content, content_bytes

PREFIX = "secagg."
PARAMS = "params"


class GrpcSecAggFleet(WrappedFleet):
    """The clients connected to ``fleet`` aggregate securely (see the module docstring).

    Its rounds are user messages, which ``fleet``'s meter (fit packages) does not see, so it
    measures its own traffic: the payload of every exchange's messages (:meth:`traffic`)."""

    def __init__(self, fleet: GrpcFleet, cfg: SecAggConfig, *, seed: int = 0) -> None:
        super().__init__(fleet)
        self.fleet, self.cfg, self.seed = fleet, cfg, seed  # fleet: ``inner``, as a GrpcFleet
        self.server = fleet.server
        self.costs: dict[int, list[StageCost]] = {}
        self._moved = Traffic()

    def traffic(self) -> Traffic:
        """The payload bytes of the protocol's messages, both ways, since the fleet started."""
        return self._moved

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]:
        if not tasks:
            return []
        base = common_params(tasks)
        cohort = [t.client_id for t in tasks]
        train: dict[str, torch.Tensor | float | int | str | bool] = {PARAMS: base}
        train.update({k: v for k, v in asdict(tasks[0].config).items() if v is not None})
        trained = self._exchange(Stage.TRAIN, round, {c: train for c in cohort})
        failures = {c: ClientFailure(round=round, client_id=c, stage=f"secagg/{Stage.TRAIN}",
                                     message="no reply (gone, too slow, or training failed)")
                    for c in cohort if c not in trained}
        setup = setup_round(self.cfg, round, sorted(trained), seed=self.seed,
                            size=base.numel())
        session = ServerSession(setup)
        steps = {Stage.ADVERTISE_KEYS: session.collect_keys,
                 Stage.SHARE_KEYS: session.collect_shares,
                 Stage.MASKED_INPUT: session.collect_masked}
        requests = session.advertise_requests()
        for stage in PROTOCOL_STAGES:
            replies = self._exchange(stage, round, requests)
            start = time.perf_counter()
            if stage == Stage.UNMASK:
                secure = session.collect_unmask(replies)
            else:
                requests = steps[stage](replies)
            self.costs[round][-1].server_seconds = time.perf_counter() - start
        log_costs(round, self.costs[round])
        for c, (stage, why) in session.dropped.items():
            failures[c] = ClientFailure(round=round, client_id=c, stage=f"secagg/{stage}",
                                        message=why)
        return secure_outcomes(round, base, secure, failures)

    def _exchange(self, stage: Stage, round: int,
                  contents: Mapping[int, Content]) -> dict[int, Content]:
        """Send each client its message of ``stage``; the replies' contents."""
        cost = StageCost(stage=stage, bytes_down=sum(map(content_bytes, contents.values())))
        start = time.perf_counter()
        replies = self.fleet.request_each(PREFIX + stage.value, contents, round=round)
        got = {c: m.content for c, m in replies.items()
               if c in contents and m.msg_type == PREFIX + stage.value}
        cost.client_seconds = cost.slowest_client_seconds = time.perf_counter() - start
        cost.bytes_up, cost.clients = sum(map(content_bytes, got.values())), len(got)
        self.costs.setdefault(round, []).append(cost)
        self._moved = Traffic(bytes_down=self._moved.bytes_down + cost.bytes_down,
                              bytes_up=self._moved.bytes_up + cost.bytes_up)
        return got


__all__ = ["GrpcSecAggFleet"]
