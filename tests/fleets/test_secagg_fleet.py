"""Secure aggregation in simulation: the fleet wrapper, the one build path and its refusals."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from fedloom.app.build import build_run
from fedloom.app.config import load_config
from fedloom.core.errors import ConfigError, RoundAborted
from fedloom.core.packages import ClientConfig, ClientResult, Downlink, Outcome
from fedloom.fleets.base import FleetBase
from fedloom.fleets.secagg import SecAggFleet
from fedloom.runtime.loop import ServerLoop
from fedloom.secagg import Quantizer, SecAggConfig, Stage, decode_sum, encode
from fedloom.secagg.ring import add

SYNTH = ["data.name=synthetic", "data.num_clients=8", "model.name=logreg", "cohort.size=6",
         "rounds=2", "client.lr=0.05", "fleet.kind=serial", "fleet.threads=1", "eval.every=100"]


class Fixed(FleetBase):
    """Each client answers with ``global + (client_id + 1) * 0.01 * ones`` and ``n = 3 + id``."""

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]:
        return [ClientResult(round=round, client_id=t.client_id,
                             params=t.params + 0.01 * (t.client_id + 1) * torch.arange(5.0),
                             num_examples=3 + t.client_id, num_steps=2) for t in tasks]


def tasks(ids: Sequence[int]) -> list[Downlink]:
    params = torch.linspace(-1, 1, 5)
    return [Downlink(round=1, client_id=c, params=params, config=ClientConfig()) for c in ids]


def expected_mean(ids: Sequence[int], q: Quantizer) -> torch.Tensor:
    base = torch.linspace(-1, 1, 5)
    total = encode(torch.zeros(5), 1, q) * 0
    for c in ids:
        total = add(total, encode(0.01 * (c + 1) * torch.arange(5.0), 3 + c, q), q.ring_bits)
    summed, count = decode_sum(total, q)
    return (base.double() + summed / count).float()


@pytest.mark.parametrize("stage", [None, *Stage.__members__.values()][:5])
def test_the_fleet_returns_the_secure_mean_with_dropouts_at_each_stage(
        stage: Stage | None) -> None:
    cfg = SecAggConfig(enabled=True, neighbours=4, threshold=3)
    drop = {} if stage in (None, Stage.TRAIN) else {stage: [2, 5]}
    fleet = SecAggFleet(Fixed(), cfg, seed=1, drop=lambda r: drop)
    out = fleet.fit(1, tasks(range(8)))
    survivors = [c for c in range(8)
                 if not drop or stage == Stage.UNMASK or c not in (2, 5)]
    results = [o for o in out if isinstance(o, ClientResult)]
    assert [r.client_id for r in results] == survivors
    mean = expected_mean(survivors, Quantizer.of(cfg))
    assert all(torch.equal(r.params, mean) for r in results)
    assert results[0].num_examples == sum(3 + c for c in survivors)
    failed = {o.client_id: o.stage for o in out if not isinstance(o, ClientResult)}
    assert failed == ({} if stage == Stage.UNMASK else {c: f"secagg/{stage}" for c in drop.get(
        stage, [])} if stage else {})
    assert [c.stage for c in fleet.costs[1]] == [s for s in Stage if s != Stage.TRAIN]


def test_a_round_below_the_threshold_is_aborted_and_the_loop_retries_it() -> None:
    calls: list[int] = []

    def drop(round: int) -> dict[Stage, list[int]]:
        calls.append(round)
        return {Stage.SHARE_KEYS: [0, 1, 2, 3]} if len(calls) == 1 else {}

    cfg = load_config(None, [*SYNTH, "secagg.enabled=true", "secagg.threshold=4",
                             "cohort.retries=1"])
    run = build_run(cfg)
    assert isinstance(run, ServerLoop) and isinstance(run.fleet, SecAggFleet)
    run.fleet.drop = drop
    history = run.run()
    assert calls == [1, 1, 2]  # round 1 aborted, tried again, then round 2
    assert history.series("round_attempts")[0] == 2
    with pytest.raises(RoundAborted, match="only 0 clients are left, the threshold is 4"):
        SecAggFleet(Fixed(), SecAggConfig(enabled=True, threshold=4), drop=lambda r: {
            Stage.SHARE_KEYS: [0, 1, 2, 3]}).fit(1, tasks(range(6)))


def test_a_secure_run_matches_the_plain_run_up_to_quantisation() -> None:
    plain = build_run(load_config(None, SYNTH)).run().final.params
    secure_run = build_run(load_config(None, [*SYNTH, "secagg.enabled=true",
                                              "secagg.neighbours=2"]))
    secure = secure_run.run().final.params
    assert not torch.equal(plain, secure)
    step = 1.0 / ((1 << 19) - 1)  # clip_range / (2^(quant_bits-1) - 1)
    assert torch.allclose(plain, secure, atol=4 * step, rtol=0)


def test_what_needs_individual_updates_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="robust aggregation needs the individual updates"):
        load_config(None, [*SYNTH, "secagg.enabled=true", "aggregator.name=median"])
    with pytest.raises(ConfigError, match=r"secagg\.threshold = 7: must be <= 6"):
        load_config(None, [*SYNTH, "secagg.enabled=true", "secagg.threshold=7"])
    for name in ("scaffold", "fednova", "qffl", "fedasync"):
        cfg = load_config(None, [*SYNTH, "secagg.enabled=true", f"algorithm.name={name}"])
        with pytest.raises(ConfigError, match=f"algorithm '{name}' reads each client's"):
            build_run(cfg)
