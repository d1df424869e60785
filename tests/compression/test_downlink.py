"""Downlink compression: fp16 and delta broadcasts, what a client rebuilds, what the server
keeps (bounded), the update moved onto the server's float32 model, and the refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.algorithms.fedavg import FedAvg
from fedloom.app.config import load_config
from fedloom.compression.config import DownlinkCoding
from fedloom.compression.downlink import BASE, CODED, HALF, VERSION, Downlinked, receive
from fedloom.compression.uplink import CompressedSizes
from fedloom.core.errors import ClientError, ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientConfig, ClientResult, Downlink, ServerState
from fedloom.transport.messages import downlink_from_package, downlink_to_package
from tests.loopback import through_the_wire

CFG = ClientConfig()


def _result(task: Downlink, params: torch.Tensor) -> ClientResult:
    return ClientResult(round=task.round, client_id=task.client_id, params=params,
                        num_examples=1, num_steps=1)


def test_fp16_sends_half_precision_and_the_update_lands_on_the_float32_model() -> None:
    algo = Downlinked(FedAvg(), DownlinkCoding.FP16, seed=0)
    state = algo.init(torch.tensor([1.0, 1e-4, 3.0]))
    task, = algo.configure(1, state, [4], CFG)
    half = torch.tensor([1.0, 1e-4, 3.0]).to(torch.float16)
    assert torch.equal(task.extras[HALF], half)
    assert torch.equal(task.params, half.float())  # what the client decodes and trains from
    assert CompressedSizes().downlink(task) == 6  # 2 bytes a value, params do not travel
    update = torch.tensor([0.5, 0.25, -1.0])
    new = algo.aggregate(1, state, [_result(task, task.params + update)])
    torch.testing.assert_close(new.params, state.params + update, rtol=0, atol=1e-7)
    assert receive(task.extras, torch.empty(0), None, block=4).equal(task.params)


def test_delta_rebuilds_the_chain_bit_for_bit_and_sends_the_whole_model_when_needed() -> None:
    algo = Downlinked(FedAvg(), DownlinkCoding.DELTA, seed=3, history=2, block=4)
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(50, generator=gen)
    kept: dict[int, tuple[int, torch.Tensor]] = {}
    state = ServerState(round=0, params=params)
    sent: dict[int, list[str]] = {}
    for rnd, cohort in enumerate([[0, 1, 2], [0, 1], [0, 2], [0], [0, 1]], start=1):
        tasks = algo.configure(rnd, state, cohort, CFG)
        for t in tasks:
            model = receive(t.extras, t.params, kept.get(t.client_id), block=4)
            assert torch.equal(model, t.params)  # the client has what the server tracked
            kept[t.client_id] = (int(t.extras[VERSION]), model)
            sent.setdefault(t.client_id, []).append("delta" if BASE in t.extras else "full")
        results = [_result(t, t.params + 0.01 * torch.randn(50, generator=gen)) for t in tasks
                   if t.client_id != 2]  # client 2 fails every task it gets
        state = algo.aggregate(rnd, state, results)
        assert (algo._model - state.params).abs().max() < 0.05  # the chain tracks the model
    assert sent[0] == ["full", "delta", "delta", "delta", "delta"]
    assert sent[1] == ["full", "delta", "full"]  # 3 rounds behind, history 2: whole model
    assert sent[2] == ["full", "full"]  # its last task failed: its model is unknown
    assert len(algo._chain) == 2  # bounded by compression.history


def test_a_delta_from_a_model_the_client_does_not_hold_fails_naming_both() -> None:
    algo = Downlinked(FedAvg(), DownlinkCoding.DELTA, seed=0, block=4)
    state = ServerState(round=0, params=torch.zeros(8))
    first, = algo.configure(1, state, [0], CFG)
    algo.aggregate(1, state, [_result(first, first.params)])
    second, = algo.configure(2, ServerState(round=1, params=torch.ones(8)), [0], CFG)
    assert int(second.extras[BASE]) == 1
    with pytest.raises(ClientError, match="changes from version 1, this client holds version 7"):
        receive(second.extras, torch.empty(0), (7, torch.zeros(8)), block=4)
    with pytest.raises(ClientError, match="holds no model"):
        receive(second.extras, torch.empty(0), None, block=4)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 40), st.floats(1e-3, 1e3))
def test_the_chain_error_stays_within_one_rounds_quantisation(seed: int, size: int,
                                                             scale: float) -> None:
    """``B_r - model_r`` is what round r's QSGD lost: at most norm(block) / 127 per value,
    whatever happened in earlier rounds (error feedback on the server)."""
    algo = Downlinked(FedAvg(), DownlinkCoding.DELTA, seed=seed, block=8)
    gen = torch.Generator().manual_seed(seed)
    params = torch.randn(size, generator=gen) * scale
    algo.configure(1, ServerState(round=0, params=params), [0], CFG)
    for rnd in range(2, 6):
        new = params + torch.randn(size, generator=gen) * scale * 0.1
        before = algo._model.clone()  # type: ignore[union-attr]
        algo.configure(rnd, ServerState(round=rnd - 1, params=new), [0], CFG)
        change = torch.nn.functional.pad(new - before, (0, (-size) % 8)).view(-1, 8)
        bound = (change.norm(dim=1, keepdim=True) / 127).expand(-1, 8).reshape(-1)[:size]
        assert bool(((algo._model - new).abs() <= bound * (1 + 1e-5) + 1e-6).all())
        params = new


def test_an_encoded_model_travels_without_params() -> None:
    layout = ParamLayout.from_module(torch.nn.Linear(3, 2))
    algo = Downlinked(FedAvg(), DownlinkCoding.FP16, seed=0)
    task, = algo.configure(2, algo.init(torch.arange(8.0)), [1], CFG)
    header, tensors = downlink_to_package(5, task)
    assert set(tensors) == {"extras/" + HALF}
    got = downlink_from_package(through_the_wire(header, tensors), layout)
    assert got.params.numel() == 0 and torch.equal(got.extras[HALF], task.extras[HALF])
    assert all(k.startswith(CODED) for k in got.extras)


@pytest.mark.parametrize(("extra", "why"), [
    ("algorithm.name=scaffold", "algorithm scaffold's clients do not send a model update"),
    ("secagg.enabled=true", "secure aggregation sends every client one float32 model"),
    ("topology.kind=gossip", "a topology \\(hierarchy or gossip\\) sends models")])
def test_refusals_name_the_downlink_key(extra: str, why: str) -> None:
    with pytest.raises(ConfigError, match=r"compression\.downlink = 'delta'.*" + why):
        load_config(None, ["data.name=synthetic", "data.num_clients=6", "cohort.size=3",
                           "compression.downlink=delta", extra])


def test_a_client_keeps_its_models_in_its_state_store_and_survives_a_restart(
        tmp_path: Path) -> None:
    """ReceivingClient keeps each client id's last model in a client-state store: on disk the
    chain rebuilds bit for bit as in memory, and a restarted process continues it."""
    from fedloom.algorithms.client_store import DiskStore
    from fedloom.runtime.clients import Client
    from fedloom.runtime.downlink_client import ReceivingClient

    class Echo(Client):
        def run_fit(self, downlink: Downlink, layout: ParamLayout) -> ClientResult:
            return _result(downlink, downlink.params)

    algo = Downlinked(FedAvg(), DownlinkCoding.DELTA, seed=3, history=3, block=4)
    layout = ParamLayout.from_module(torch.nn.Linear(7, 7))
    gen = torch.Generator().manual_seed(0)
    state = ServerState(round=0, params=torch.randn(layout.size, generator=gen))
    memory = ReceivingClient(Echo(), block=4)
    disk = ReceivingClient(Echo(), block=4, store=DiskStore(tmp_path, 3))
    for rnd in range(1, 6):
        if rnd == 4:  # the process restarts: a new client on the same directory
            disk = ReceivingClient(Echo(), block=4, store=DiskStore(tmp_path, 3))
        tasks = algo.configure(rnd, state, [0, 1, 2], CFG)
        got = [c.run_fit(t, layout).params for t in tasks for c in (memory, disk)]
        for a, b, t in zip(got[::2], got[1::2], tasks):
            assert torch.equal(a, b) and torch.equal(a, t.params)
        assert rnd == 1 or all(BASE in t.extras for t in tasks)  # changes after round 1
        state = algo.aggregate(rnd, state, [_result(t, t.params + 0.01) for t in tasks])
    kept = disk.kept(0)
    assert kept is not None and kept[0] == 5
