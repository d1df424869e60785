"""Async mode: idle clients get the newest model, results are mixed in with their staleness."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from fedloom.algorithms.asynchronous import FedAsync, FedAsyncOptions, Staleness
from fedloom.app.config import load_config
from fedloom.app.server import ServerOptions, build_deployment
from fedloom.core.packages import ClientConfig
from fedloom.fleets.grpc import RoundPolicy
from fedloom.runtime.async_loop import AsyncLoop
from fedloom.runtime.sinks import read_rows
from fedloom.transport.handlers import MessageType
from tests.loopback import SYNTH, serve_to_the_end, thread_clients, tiny_server


@pytest.mark.parametrize("algorithm", ["fedasync", "fedbuff"])
def test_an_async_run_reaches_its_model_versions(tmp_path: Path, algorithm: str) -> None:
    cfg = load_config(None, [*SYNTH, "rounds=6", f"algorithm.name={algorithm}",
                             "clock.concurrency=3", f"out={tmp_path / 'run'}",
                             *(["algorithm.buffer_size=2"] if algorithm == "fedbuff" else [])])
    dep = build_deployment(cfg, ServerOptions(address="127.0.0.1:0", insecure=True,
                                              console=False))
    assert isinstance(dep.loop, AsyncLoop)
    history = serve_to_the_end(dep)
    assert [r["round"] for r in history.rows] == [1, 2, 3, 4, 5, 6]
    assert history.final.round == 6 and bool(torch.isfinite(history.final.params).all())
    assert history.rows[-1]["test_accuracy"] is not None
    assert all(r["mean_staleness"] is not None for r in history.rows)
    assert len(read_rows(tmp_path / "run" / "metrics.jsonl")) == 6


def test_a_stale_result_is_mixed_in_with_fedasyncs_weight() -> None:
    """Both clients get version 0. Client 1 answers first (version 1); client 0 is held until
    the server has that answer, so its result is one version stale and mixed in with weight
    alpha * (1 + 1)^-a."""
    release, done = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow(params: list[torch.Tensor], config: dict[str, object]
             ) -> tuple[list[torch.Tensor], int, dict[str, float]]:
        release.wait(20)
        return [torch.full_like(p, 10.0) for p in params], 1, {}

    def fast(params: list[torch.Tensor], config: dict[str, object]
             ) -> tuple[list[torch.Tensor], int, dict[str, float]]:
        calls.append(1)
        if len(calls) > 1:  # the second task waits until the run is over
            done.wait(20)
        return [torch.full_like(p, 2.0) for p in params], 1, {}

    algo = FedAsync(FedAsyncOptions(alpha=0.5, staleness=Staleness.POLYNOMIAL, a=1.0))
    with (tiny_server(policy=RoundPolicy(round_timeout=20)) as (server, fleet),
          thread_clients(server.port, [0], client=slow),
          thread_clients(server.port, [1], client=fast)):
        server.handlers.register(MessageType.FIT_REPLY,
                                 lambda e: release.set() if e.client_id == 1 else None)
        fleet.wait_for_clients(2, 10)
        loop = AsyncLoop(algorithm=algo, fleet=fleet, client=ClientConfig(), versions=2,
                               layout=server.layout, initial_params=torch.zeros(8),
                               evaluate=lambda p: {}, concurrency=2)
        history = loop.run()
        done.set()
    # version 1: lerp(0, 2, 0.5) = 1; version 2: staleness 1, lerp(1, 10, 0.5 / 2) = 3.25
    assert [r["mean_staleness"] for r in history.rows] == [0.0, 1.0]
    assert torch.equal(history.final.params, torch.full((8,), 3.25))
