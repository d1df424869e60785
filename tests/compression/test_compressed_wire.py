"""Compressed updates on the wire: what a client sends is the codec's tensors, the server
checks and decodes them (a hostile payload fails that client's result with a named reason and
the deployment keeps serving), and how compression composes with DP, SecAgg and topologies."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
import torch

from fedloom.algorithms.client_store import MemoryStore
from fedloom.algorithms.fedavg import FedAvg
from fedloom.app.build import build_run
from fedloom.app.client import ConfigClient
from fedloom.app.config import load_config
from fedloom.app.server import ServerOptions, build_deployment, reply_schema
from fedloom.compression import CompressionConfig, Uplink
from fedloom.compression.codecs import QSGD, Float16
from fedloom.compression.payload import InvalidPayload
from fedloom.compression.sparse import encode_indices
from fedloom.compression.uplink import ENCODED, RESIDUAL, compress, compressed_local
from fedloom.compression.variates import (
    C_FROM,
    C_MIRROR,
    C_MIRROR_VERSION,
    C_VERSION,
    check_variate,
    decode_variate,
    encode_variate,
    prefix,
    store_variate_version,
)
from fedloom.core.errors import AggregationError, ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientConfig, ClientFailure, ClientResult, Downlink
from fedloom.fleets.base import meter_of
from fedloom.fleets.decoding import DecodingFleet
from fedloom.privacy.local import LocalNoise
from fedloom.privacy.private import private_local
from fedloom.runtime.client_loop import ClientLoop
from fedloom.runtime.clients import Client
from fedloom.runtime.local_state import StatefulClient
from fedloom.runtime.loop import ServerLoop
from fedloom.runtime.secagg_client import SecAggClient
from fedloom.transport.handlers import Handlers
from fedloom.transport.messages import result_to_package
from tests.loopback import FAST, SYNTH, downlinks, thread_clients, tiny_server

TINY = ["data.name=synthetic", "data.num_clients=8", "model.name=logreg", "cohort.size=4",
        "client.lr=0.01", "rounds=2", "fleet.threads=1"]
LAYOUT = ParamLayout.from_module(torch.nn.Linear(20, 5))  # 105 values
TOPK = CompressionConfig(uplink=Uplink.TOPK, ratio=0.03)  # 4 of 105: Elias-Fano indices


class Hostile(Client):
    """Client 0 sends an index past the end, client 1 one index twice, others a fair top-k
    payload (indices 1, 5, 9, 40 with values 1..4)."""

    def run_fit(self, downlink: Downlink, layout: ParamLayout) -> ClientResult:
        idx = {0: [1, 5, 9, 110], 1: [1, 5, 5, 9]}.get(downlink.client_id, [1, 5, 9, 40])
        tensors = {**encode_indices(torch.tensor(idx), layout.size),
                   "values": torch.tensor([1.0, 2.0, 3.0, 4.0])}
        return ClientResult(round=downlink.round, client_id=downlink.client_id,
                            params=downlink.params, num_examples=3, num_steps=1,
                            extras={ENCODED + k: v for k, v in tensors.items()})


@pytest.mark.integration
def test_hostile_topk_payloads_fail_with_a_named_reason_and_the_server_keeps_serving() -> None:
    algo = compress(FedAvg(), TOPK, seed=0, store=MemoryStore())
    schema = reply_schema(algo, LAYOUT)
    assert schema.encoded and set(schema.extras or {}) == {"codec/ef_low", "codec/ef_high",
                                                           "codec/values"}
    with tiny_server(layout=LAYOUT, schema=schema) as (server, grpc_fleet), \
            thread_clients(server.port, [0, 1, 2], client=Hostile()):
        fleet = DecodingFleet(grpc_fleet, algo.codec)
        grpc_fleet.wait_for_clients(3, 20)
        bad_range, bad_dup, fair = fleet.fit(1, downlinks(1, [0, 1, 2], LAYOUT, value=0.5))
        assert isinstance(bad_range, ClientFailure) and bad_range.stage == "validate"
        assert "index_out_of_range" in bad_range.message, bad_range.message
        assert isinstance(bad_dup, ClientFailure) and "index_duplicated" in bad_dup.message
        assert isinstance(fair, ClientResult)
        expected = torch.full((LAYOUT.size,), 0.5)
        expected[[1, 5, 9, 40]] += torch.tensor([1.0, 2.0, 3.0, 4.0])
        torch.testing.assert_close(fair.params, expected, rtol=0, atol=0)
        again = fleet.fit(2, downlinks(2, [2], LAYOUT))  # the server still serves
        assert [type(o) for o in again] == [ClientResult]
        meter = meter_of(fleet)  # the decoder's inner gRPC fleet measured the round
        assert meter is grpc_fleet and meter.traffic().bytes_up > 0


def test_an_encoded_reply_carries_no_params_and_no_client_state() -> None:
    local = compressed_local(TOPK, FedAvg().local, seed=0, layout=LAYOUT)
    down = Downlink(round=1, client_id=3, params=torch.zeros(LAYOUT.size),
                    config=ClientConfig())
    trained = ClientResult(round=1, client_id=3, params=torch.linspace(-1, 1, LAYOUT.size),
                           num_examples=2, num_steps=1)
    assert local.finish is not None
    result = local.finish(trained, down)
    assert RESIDUAL in result.extras  # error feedback is on for top-k

    class Trained(Client):
        def run_fit(self, downlink: Downlink, layout: ParamLayout) -> ClientResult:
            return result

    sent = StatefulClient(Trained(), keys=[RESIDUAL]).run_fit(down, LAYOUT)
    _, tensors = result_to_package(7, sent)
    assert set(tensors) == {"extras/codec/ef_low", "extras/codec/ef_high",
                            "extras/codec/values"}
    assert sum(t.numel() * t.element_size() for t in tensors.values()) == \
        compress(FedAvg(), TOPK, seed=0, store=MemoryStore()).codec.nbytes(LAYOUT.size)


def test_dp_clips_and_noises_before_the_codec_encodes() -> None:
    """Local DP then fp16: the encoded values are fp16 of the clipped, noised update (the
    codec is post-processing), not a clip of the decoded one."""
    cfg = load_config(None, [*TINY, "privacy.mechanism=local", "privacy.clip=0.5",
                             "privacy.noise_multiplier=0.3", "compression.uplink=fp16"])
    assert cfg.privacy is not None
    local = compressed_local(cfg.compression, private_local(cfg.privacy, FedAvg().local, 5),
                             seed=5)
    down = Downlink(round=2, client_id=1, params=torch.ones(50), config=ClientConfig())
    trained = ClientResult(round=2, client_id=1, params=torch.ones(50) + 3.0,
                           num_examples=2, num_steps=1)
    assert local.finish is not None
    values = local.finish(trained, down).extras[ENCODED + "values"]
    noised = LocalNoise(clip=0.5, noise_multiplier=0.3, seed=5)(trained, down)
    assert torch.equal(values, (noised.params - down.params).to(torch.float16))
    # and the one build path orders them the same way
    loop = build_run(cfg)
    finish = loop.algorithm.local.finish
    assert isinstance(getattr(finish, "inner", None), LocalNoise)
    assert all("epsilon" in r for r in loop.run().rows)


def test_secagg_takes_quantisers_without_error_feedback_and_refuses_the_rest() -> None:
    rows = build_run(load_config(None, [*TINY, "secagg.enabled=true",
                                        "compression.uplink=qsgd"])).run().rows
    assert len(rows) == 2 and all(r["num_results"] == 4 for r in rows)
    for codec in ("topk", "randk", "sign"):
        with pytest.raises(ConfigError, match=r"compression\.uplink = '" + codec):
            load_config(None, [*TINY, "secagg.enabled=true", f"compression.uplink={codec}"])
    with pytest.raises(ConfigError, match=r"compression\.error_feedback = True.*residual"):
        load_config(None, [*TINY, "secagg.enabled=true", "compression.uplink=fp16",
                           "compression.error_feedback=true"])


@pytest.mark.integration
def test_secagg_with_qsgd_deployed_ends_with_the_simulations_model(tmp_path: Path) -> None:
    """Each deployed client decodes its QSGD update before the masking ring, as a simulated
    one does: the secure sums, and so the models, are the same."""
    overrides = [*SYNTH, "secagg.enabled=true", "compression.uplink=qsgd",
                 "compression.block=16"]
    sim = build_run(load_config(None, overrides))
    sim.run()
    dep = build_deployment(load_config(None, [*overrides, f"out={tmp_path / 'run'}"]),
                           ServerOptions(address="127.0.0.1:0", insecure=True, console=False))
    inner = ConfigClient()
    runners = []
    for cid in range(6):
        secure = SecAggClient(inner)
        runners.append(ClientLoop(f"127.0.0.1:{dep.server.port}", client_id=cid, client=secure,
                                  insecure=True, backoff=FAST,
                                  handlers=secure.install(Handlers())))
    threads = [threading.Thread(target=r.run, daemon=True) for r in runners]
    for t in threads:
        t.start()
    try:
        dep.fleet.wait_for_clients(6, 30)
        history = dep.loop.run()
    finally:
        for r in runners:
            r.stop()
        dep.server.stop(grace=0.5)
        for t in threads:
            t.join(timeout=15)
    assert [r["num_results"] for r in history.rows] == [3, 3, 3]
    torch.testing.assert_close(history.final.params, sim.state.params, rtol=0, atol=0)


def test_a_topology_a_personal_algorithm_and_scaffold_with_powersgd_are_refused() -> None:
    with pytest.raises(ConfigError, match="algorithm ditto does not send a model update"):
        load_config(None, [*TINY, "compression.uplink=qsgd", "algorithm.name=ditto"])
    with pytest.raises(ConfigError, match="scaffold also sends a flat tensor through the codec"):
        load_config(None, [*TINY, "compression.uplink=powersgd", "algorithm.name=scaffold"])
    base = load_config(None, [*TINY, "compression.uplink=qsgd", "algorithm.name=scaffold"])
    assert base.compression.uplink is Uplink.QSGD
    with pytest.raises(ConfigError, match=r"compression\.uplink = .qsgd.: a topology"):
        load_config(None, [*TINY, "compression.uplink=qsgd", "topology.kind=gossip"])


def test_scaffolds_control_variate_travels_as_a_change_and_both_sides_agree() -> None:
    """SCAFFOLD with top-k: every client's mirror (its copy of what the server stores) equals
    the server's stored c_i after the run, and the run learns."""
    loop = build_run(load_config(None, [*TINY, "rounds=4", "algorithm.name=scaffold",
                                        "compression.uplink=topk", "compression.ratio=0.2",
                                        "eval.train=true"]))
    rows = loop.run().rows
    assert rows[-1]["global_train_loss"] < rows[0]["global_train_loss"]  # type: ignore[operator]
    assert loop.store is not None
    held = dict(loop.store.items())
    mirrors = {cid: v for (key, cid), v in held.items() if key == C_MIRROR}
    assert mirrors and all(torch.equal(v, held[("c", cid)]) for cid, v in mirrors.items())
    assert all(float(held[(C_VERSION, cid)].reshape(-1)[0]) >= 1 for cid in mirrors)


def test_a_variate_change_from_another_round_is_refused_and_a_stale_mirror_restarts() -> None:
    fp16 = Float16()
    task = Downlink(round=6, client_id=2, params=torch.zeros(3), config=ClientConfig(),
                    extras={C_VERSION: torch.tensor(5), C_MIRROR: torch.ones(2),
                            C_MIRROR_VERSION: torch.tensor(3.0)})
    out = encode_variate(fp16, "c_i", {"c_i": torch.tensor([0.25, 2.0])}, task, None)
    assert int(out[C_FROM]) == -1  # its mirror is of round 3, the server's of round 5
    assert out[C_MIRROR].tolist() == [0.25, 2.0]
    result = ClientResult(round=6, client_id=2, params=torch.zeros(3), num_examples=1,
                          num_steps=1, extras={**out, C_FROM: torch.tensor(4)})
    with pytest.raises(InvalidPayload, match=r"bad_value.*change from round 4; the server "
                       r"holds round 5"):
        check_variate(fp16, "c_i", 2, task, result)
    store = MemoryStore()
    store.put(2, "c", torch.tensor([1.0, 1.0]))
    fresh = dataclasses.replace(result, extras={**out, C_FROM: torch.tensor(5)})
    check_variate(fp16, "c_i", 2, task, fresh)
    rebuilt = decode_variate(fp16, "c_i", "c", 2, store, fresh)  # stored c + the change
    assert rebuilt.extras["c_i"].tolist() == [1.25, 3.0]
    assert store.get(2, C_VERSION) is None  # its version only once the algorithm stored it
    store_variate_version(store, rebuilt)
    assert float(store.get(2, C_VERSION)[0]) == 6.0  # type: ignore[index]


def test_a_variate_version_is_stored_after_its_variate_and_never_without_it() -> None:
    """Each client's C_VERSION is written after SCAFFOLD stored its c_i that round; a round
    whose aggregation fails leaves the versions of the last stored variates."""
    loop = build_run(load_config(None, [*TINY, "rounds=3", "algorithm.name=scaffold",
                                        "compression.uplink=fp16"]))
    store = loop.store
    assert store is not None and isinstance(loop, ServerLoop)
    written: list[tuple[str, int]] = []
    put = store.put

    def recording(client_id: int, key: str, value: torch.Tensor) -> None:
        written.append((key, client_id))
        put(client_id, key, value)

    store.put = recording  # type: ignore[method-assign]
    loop.run()
    versions = [i for i, (key, _) in enumerate(written) if key == C_VERSION]
    assert versions
    for i in versions:  # this round's c_i of the same client came first
        cid = written[i][1]
        last = max(j for j, w in enumerate(written[:i]) if w in {("c", cid), (C_VERSION, cid)})
        assert written[last] == ("c", cid)
    held = {cid: float(store.get(cid, C_VERSION)[0])  # type: ignore[index]
            for _, cid in written if store.get(cid, C_VERSION) is not None}

    def fails(*args: object) -> None:
        raise AggregationError("refused")

    scaffold = loop.algorithm.inner  # type: ignore[attr-defined]
    scaffold.aggregate = fails
    loop.rounds = 4
    with pytest.raises(AggregationError, match="refused"):
        loop.run()
    assert {cid: float(store.get(cid, C_VERSION)[0])  # type: ignore[index]
            for cid in held} == held


def test_a_simulated_rejection_is_a_failure_too() -> None:
    """The decoder runs on simulated fleets as well: a result whose encoding is broken is a
    validate failure, the others are decoded against their task's model."""

    class Breaks:
        is_worker = False

        def fit(self, round: int, tasks: list[Downlink]) -> list[ClientResult]:
            enc = {ENCODED + "values": torch.full((LAYOUT.size,), 2.0, dtype=torch.float16)}
            out = [ClientResult(round=round, client_id=t.client_id, params=t.params,
                                num_examples=1, num_steps=1, extras=enc) for t in tasks]
            bad = {ENCODED + "values": torch.full((3,), 2.0, dtype=torch.float16)}
            out[0] = dataclasses.replace(out[0], extras=bad)
            return out

        def close(self) -> None:
            pass

    fp16 = compress(FedAvg(), CompressionConfig(uplink=Uplink.FP16), seed=0,
                    store=MemoryStore()).codec
    fleet = DecodingFleet(Breaks(), fp16)  # type: ignore[arg-type]
    first, second = fleet.fit(1, downlinks(1, [0, 1], LAYOUT, value=1.0))
    assert isinstance(first, ClientFailure) and "wrong_shape" in first.message
    assert isinstance(second, ClientResult) and torch.equal(
        second.params, torch.full((LAYOUT.size,), 3.0))


def test_a_variate_change_that_decodes_to_infinity_is_refused_before_the_store() -> None:
    """Finite parts can still overflow: a norm near float32's top times level 127. Such a
    change is refused as non_finite where results arrive, never stored as SCAFFOLD's c_i."""
    qsgd = QSGD(levels=127, block=16)
    task = Downlink(round=2, client_id=1, params=torch.zeros(3), config=ClientConfig(),
                    extras={C_VERSION: torch.tensor(0)})
    hostile = {f"{prefix('c_i')}norms": torch.tensor([3e38]),
               f"{prefix('c_i')}levels": torch.tensor([127, -127], dtype=torch.int8)}
    result = ClientResult(round=2, client_id=1, params=torch.zeros(3), num_examples=1,
                          num_steps=1, extras={**hostile, C_FROM: torch.tensor(-1)})
    with pytest.raises(InvalidPayload, match=r"non_finite.*c_i change"):
        check_variate(qsgd, "c_i", 2, task, result)
