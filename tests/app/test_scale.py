"""Scale: a hundred concurrent clients served round after round, and a 300 MB model streamed
to a client and back (no message-size cap: the payload travels in 1 MiB chunks)."""

from __future__ import annotations

import time

import pytest
import torch

from fedloom.core.layout import LayoutEntry, ParamLayout
from fedloom.core.packages import ClientResult
from fedloom.fleets.grpc import RoundPolicy
from fedloom.transport.service import Limits
from tests.loopback import downlinks, plus_one, thread_clients, tiny_server


def test_a_hundred_concurrent_clients_are_all_served_for_several_rounds() -> None:
    ids = list(range(100))
    with (tiny_server(policy=RoundPolicy(round_timeout=60)) as (server, fleet),
          thread_clients(server.port, ids)):
        fleet.wait_for_clients(100, 60)
        for rnd in (1, 2, 3):
            outcomes = fleet.fit(rnd, downlinks(rnd, ids, server.layout, value=rnd))
            assert [o.client_id for o in outcomes] == ids
            assert all(isinstance(o, ClientResult) and float(o.params[0]) == rnd + 1
                       for o in outcomes)
        assert len(server.connected()) == 100


@pytest.mark.slow
def test_a_300_mb_model_streams_to_a_client_and_back() -> None:
    size = 75 * 2**20  # float32: 300 MiB
    layout = ParamLayout(entries=(LayoutEntry(name="w", shape=(size,), dtype=torch.float32,
                                              offset=0, trainable=True),))
    params = torch.arange(size, dtype=torch.float32)
    with (tiny_server(layout=layout, policy=RoundPolicy(round_timeout=300),
                      limits=Limits(idle_timeout=120)) as (server, fleet),
          thread_clients(server.port, [0], client=plus_one)):
        fleet.wait_for_clients(1, 30)
        (task,) = downlinks(1, [0], layout)
        start = time.perf_counter()
        (result,) = fleet.fit(1, [type(task)(round=1, client_id=0, params=params,
                                             config=task.config)])
        seconds = time.perf_counter() - start
    assert isinstance(result, ClientResult), result
    assert torch.equal(result.params, params + 1)
    print(f"300 MiB down and up in {seconds:.1f} s")
