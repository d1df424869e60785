"""The SecAgg(+) protocol in one process: exact sums, dropouts at every stage, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.core.errors import AggregationError, ClientError, ConfigError, RoundAborted
from fedloom.secagg import (
    ClientSession,
    RoundSetup,
    SecAggConfig,
    Stage,
    decode_sum,
    encode,
    neighbour_graph,
    run_in_memory,
    shamir,
)
from fedloom.secagg.ring import add, to_signed

COHORT = list(range(10, 20))


def setup_for(cfg: SecAggConfig, size: int = 50, round: int = 3) -> RoundSetup:
    return RoundSetup.make(cfg, cohort=COHORT, round=round, seed=7, update_size=size)


def inputs_for(setup: RoundSetup) -> dict[int, np.ndarray]:
    gen = torch.Generator().manual_seed(0)
    return {c: encode(torch.randn(setup.size - 1, generator=gen) * 0.3, 5 + c,
                      setup.quantizer) for c in setup.cohort}


def plain_sum(inputs: dict[int, np.ndarray], clients: list[int], bits: int) -> np.ndarray:
    total = np.zeros_like(next(iter(inputs.values())))
    for c in clients:
        total = add(total, inputs[c], bits)
    return total


@pytest.mark.parametrize("neighbours", [None, 4, 6])
@pytest.mark.parametrize(("stage", "dropped", "in_sum"), [
    (None, [], COHORT),
    (Stage.ADVERTISE_KEYS, [11, 15], [c for c in COHORT if c not in (11, 15)]),
    (Stage.SHARE_KEYS, [12, 13], [c for c in COHORT if c not in (12, 13)]),
    # the case that needs the dropped clients' mask keys rebuilt from their shares
    (Stage.MASKED_INPUT, [14, 19], [c for c in COHORT if c not in (14, 19)]),
    # dropped after sending its input: the input stays in the sum
    (Stage.UNMASK, [10, 16], COHORT),
])
def test_the_masked_sum_is_the_plain_quantised_sum_exactly(
        neighbours: int | None, stage: Stage | None, dropped: list[int],
        in_sum: list[int]) -> None:
    setup = setup_for(SecAggConfig(enabled=True, neighbours=neighbours, threshold=None))
    inputs = inputs_for(setup)
    out = run_in_memory(setup, inputs, drop={stage: dropped} if stage else None)
    assert out.sum.clients == tuple(in_sum)
    expected, count = decode_sum(plain_sum(inputs, in_sum, 64), setup.quantizer)
    assert torch.equal(out.sum.total, expected)
    assert out.sum.count == count == sum(5 + c for c in in_sum)
    assert {c: s for c, (s, _) in out.dropped.items()} == {c: stage for c in dropped}
    assert [c.stage for c in out.costs] == list(Stage)[1:]
    assert all(c.bytes_up > 0 and c.bytes_down > 0 for c in out.costs)


def test_a_32_bit_ring_wraps_and_still_sums_exactly() -> None:
    setup = setup_for(SecAggConfig(enabled=True, quant_bits=12, ring_bits=32, neighbours=4))
    inputs = inputs_for(setup)
    out = run_in_memory(setup, inputs, drop={Stage.MASKED_INPUT: [17]})
    clients = [c for c in COHORT if c != 17]
    ring = plain_sum(inputs, clients, 32)
    assert torch.equal(out.sum.total, decode_sum(ring, setup.quantizer)[0])
    assert int(to_signed(ring, 32)[-1]) == sum(5 + c for c in clients)


def test_below_the_threshold_the_round_is_aborted_naming_the_stage() -> None:
    setup = setup_for(SecAggConfig(enabled=True, threshold=6))
    with pytest.raises(RoundAborted, match="only 5 clients are left, the threshold is 6") as err:
        run_in_memory(setup, inputs_for(setup), drop={Stage.MASKED_INPUT: COHORT[:5]})
    assert err.value.stage == "secagg/masked_input" and err.value.round == 3


def test_too_few_unmask_answers_cannot_remove_the_masks() -> None:
    setup = setup_for(SecAggConfig(enabled=True, neighbours=4, threshold=4))
    with pytest.raises(RoundAborted, match=r"cannot be rebuilt: .* shares, the threshold is 4"):
        run_in_memory(setup, inputs_for(setup), drop={Stage.UNMASK: COHORT[:6]})


def test_a_sparse_graph_drops_a_client_whose_neighbours_are_gone() -> None:
    setup = setup_for(SecAggConfig(enabled=True, neighbours=2, threshold=2))
    victim = COHORT[0]
    out = run_in_memory(setup, inputs_for(setup),
                        drop={Stage.ADVERTISE_KEYS: list(setup.graph[victim])})
    assert out.dropped[victim] == (Stage.ADVERTISE_KEYS,
                                   "fewer than 1 of its neighbours are left")
    assert victim not in out.sum.clients


def test_a_malformed_reply_drops_its_client_with_the_reason() -> None:
    setup = setup_for(SecAggConfig(enabled=True, neighbours=4))
    from fedloom.secagg.server import ServerSession

    server = ServerSession(setup)
    requests = server.advertise_requests()
    sessions = {c: ClientSession(c) for c in COHORT}
    replies = {c: sessions[c].handle(Stage.ADVERTISE_KEYS, m) for c, m in requests.items()}
    replies[13] = {"c_pk": torch.zeros(31, dtype=torch.uint8), "s_pk": replies[13]["s_pk"]}
    server.collect_keys(replies)
    assert server.dropped[13] == (Stage.ADVERTISE_KEYS,
                                  "bad reply: c_pk: need 32 uint8 values")


def test_a_client_never_reveals_both_secrets_of_one_neighbour() -> None:
    setup = RoundSetup.make(SecAggConfig(enabled=True, threshold=2), cohort=[0, 1, 2],
                            round=1, seed=0, update_size=1)
    from fedloom.secagg.server import ServerSession

    server, sessions = ServerSession(setup), {c: ClientSession(c) for c in (0, 1, 2)}
    for c in sessions:
        sessions[c].set_input(encode(torch.tensor([0.1]), 1, setup.quantizer))
    msgs = server.advertise_requests()
    for stage, collect in [(Stage.ADVERTISE_KEYS, server.collect_keys),
                           (Stage.SHARE_KEYS, server.collect_shares),
                           (Stage.MASKED_INPUT, server.collect_masked)]:
        msgs = collect({c: sessions[c].handle(stage, m) for c, m in msgs.items()})
    greedy = {"alive": torch.tensor([0, 1, 2]), "dropped": torch.tensor([1])}
    with pytest.raises(ClientError, match="alive and dropped must split"):
        sessions[0].handle(Stage.UNMASK, greedy)
    with pytest.raises(ClientError, match="share_keys after masked_input"):
        sessions[1].handle(Stage.SHARE_KEYS, msgs[1])


def test_a_client_refuses_a_threshold_below_a_majority() -> None:
    msg = {"round": 1, "threshold": 2, "size": 3, "clip_range": 1.0, "quant_bits": 8,
           "ring_bits": 32, "neighbours": torch.tensor([1, 2, 3, 4, 5])}
    with pytest.raises(ClientError, match="threshold = 2: need an integer in \\[4, 6\\]"):
        ClientSession(0).handle(Stage.ADVERTISE_KEYS, msg)


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(2, 6), st.integers(0, 4))
def test_shamir_any_threshold_shares_give_the_secret_back(secret: bytes, t: int,
                                                          extra: int) -> None:
    holders = list(range(1, t + extra + 1))
    shares = shamir.split(secret, threshold=t, holders=holders)
    assert shamir.combine({x: shares[x] for x in holders[-t:]}, threshold=t) == secret
    with pytest.raises(shamir.ShareError):
        shamir.combine({x: shares[x] for x in holders[: t - 1]}, threshold=t)


def test_the_neighbour_graph_is_symmetric_and_regular() -> None:
    graph = neighbour_graph(list(range(30)), 6, seed=1, round=2)
    assert all(len(v) == 6 and all(u in graph[w] for w in v) for u, v in graph.items())
    assert graph != neighbour_graph(list(range(30)), 6, seed=1, round=3)
    assert all(len(v) == 3 for v in neighbour_graph([1, 2, 3, 4], 6, seed=1, round=2).values())


def test_encoding_refuses_what_it_cannot_represent() -> None:
    q = setup_for(SecAggConfig(enabled=True)).quantizer
    with pytest.raises(AggregationError, match="NaN or infinite"):
        encode(torch.tensor([float("nan")]), 1, q)
    with pytest.raises(AggregationError, match="num_examples = 0"):
        encode(torch.tensor([0.0]), 0, q)
    assert encode(torch.tensor([5.0, -5.0]), 1, q).view(np.int64)[:2].tolist() == [
        (1 << 19) - 1, -((1 << 19) - 1)]  # clipped to clip_range


def test_config_problems_are_named() -> None:
    with pytest.raises(ConfigError) as err:
        SecAggConfig(threshold=1, neighbours=3, quant_bits=40, clip_range=0.0)
    text = str(err.value)
    for key in ("threshold = 1", "neighbours = 3", "quant_bits = 40", "clip_range = 0.0"):
        assert key in text
    with pytest.raises(ConfigError, match=r"threshold = 2: with a cohort of 10 .* \[3, 5\]"):
        setup_for(SecAggConfig(enabled=True, neighbours=4, threshold=2))
