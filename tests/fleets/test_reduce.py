"""``fleet.aggregation=reduce``: the example-weighted sum built as updates arrive (by hand, and
the vectorized fleet against its exact mode), bad updates kept out of it, and algorithms that
are not reducible aggregated exactly."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from fedloom import ClientConfig, ConfigError, FedAvg, Simulation
from fedloom.algorithms.aggregate import weighted_mean
from fedloom.core.errors import AggregationError
from fedloom.core.packages import ClientFailure, ClientResult
from fedloom.fleets import FleetConfig, FleetKind, make_fleet
from fedloom.fleets.config import AggregationMode
from fedloom.fleets.reduce import WeightedSum
from fedloom.fleets.vectorized import VectorizedFleet
from tests.conftest import make_image_data
from tests.fleets.test_vectorized import CONFIGS, MODELS, UNEQUAL, make_spec, make_tasks

pytestmark = pytest.mark.usefixtures("one_thread")


def _result(cid: int, params: list[float], n: int) -> ClientResult:
    return ClientResult(round=1, client_id=cid, params=torch.tensor(params), num_examples=n,
                        num_steps=1)


def test_weighted_sum_by_hand_keeps_bad_updates_out() -> None:
    total = WeightedSum(2)
    first = total.add([_result(0, [1.0, 2.0], 1),
                       ClientFailure(round=1, client_id=1, stage="fit", message="gone")])
    second = total.add([_result(2, [4.0, -1.0], 3), _result(3, [float("nan"), 0.0], 5),
                        _result(4, [1.0, 2.0, 3.0], 2)])
    out = total.results(first + second, torch.float32)
    ok = [o for o in out if isinstance(o, ClientResult)]
    assert [o.client_id for o in ok] == [0, 2]
    assert all(o.params is ok[0].params for o in ok)  # one tensor: the aggregate's mean
    assert torch.equal(ok[0].params, torch.tensor([3.25, -0.25]))  # (1*[1,2] + 3*[4,-1]) / 4
    failed = {o.client_id: o for o in out if isinstance(o, ClientFailure)}
    assert failed[1].stage == "fit"
    assert failed[3].stage == failed[4].stage == "validate"
    assert "NaN" in failed[3].message and "shape" in failed[4].message


def test_weighted_sum_with_nothing_added_or_no_examples() -> None:
    assert WeightedSum(2).results([], torch.float32) == []
    zero = WeightedSum(1)
    with pytest.raises(AggregationError, match="sum to 0"):
        zero.results(zero.add([_result(0, [1.0], 0)]), torch.float32)


def test_weighted_sum_reads_a_chunks_rows_in_place_and_does_not_overflow() -> None:
    from fedloom.fleets.reduce import _matrices

    a, b = torch.arange(12.0).view(3, 4), torch.arange(8.0).view(2, 4) + 100
    rows = [*a, b[1], *b]  # a run of a, a lone row, a run of b: three views, nothing copied
    pieces = _matrices(rows)
    assert [(i, m.shape[0]) for i, m in pieces] == [(0, 3), (3, 1), (4, 2)]
    assert pieces[0][1].data_ptr() == a.data_ptr() and pieces[2][1].data_ptr() == b.data_ptr()
    assert torch.equal(torch.cat([m for _, m in pieces]), torch.stack(rows))
    total = WeightedSum(4)  # the mean over the pieces is the mean over the rows
    results = [ClientResult(round=1, client_id=k, params=r, num_examples=k + 1, num_steps=1)
               for k, r in enumerate(rows)]  # the views themselves
    got = total.results(total.add(results), torch.float32)
    expected = sum((k + 1) * r for k, r in enumerate(rows)) / sum(range(1, 7))
    assert torch.allclose(got[0].params, expected)  # type: ignore[union-attr]
    big = WeightedSum(2)  # n_k x_k would overflow float32; the mean does not
    out = big.results(big.add([_result(0, [3e38, 1.0], 600), _result(1, [3e38, 3.0], 600)]),
                      torch.float32)
    assert torch.equal(out[0].params, torch.tensor([3e38, 2.0]))  # type: ignore[union-attr]


@pytest.mark.parametrize("chunk", [2, None])
def test_vectorized_reduce_is_the_exact_mean_within_float_rounding(chunk: int | None) -> None:
    spec = make_spec(make_image_data(per_client=UNEQUAL), MODELS["mlp"])
    spec = dataclasses.replace(spec, reducible=True)
    tasks = make_tasks(spec, [CONFIGS["momentum+wd"]] * 5)
    exact = make_fleet(FleetConfig(kind=FleetKind.VECTORIZED, chunk=chunk), spec).fit(1, tasks)
    fleet = make_fleet(FleetConfig(kind=FleetKind.VECTORIZED, chunk=chunk,
                                   aggregation=AggregationMode.REDUCE), spec)
    assert isinstance(fleet, VectorizedFleet) and fleet.reduces
    reduced = fleet.fit(1, tasks)
    ok = [o for o in exact if isinstance(o, ClientResult)]
    mean = weighted_mean([o.params for o in ok], [o.num_examples for o in ok])
    got = [o for o in reduced if isinstance(o, ClientResult)]
    assert [o.client_id for o in got] == [o.client_id for o in ok] == [0, 1, 2, 3, 4]
    assert all(o.params is got[0].params for o in got)
    assert torch.allclose(got[0].params, mean, rtol=1e-5, atol=1e-6)
    assert [(o.num_examples, o.num_steps, o.metrics) for o in got] == \
        [(o.num_examples, o.num_steps, o.metrics) for o in ok]


def test_a_reducing_run_follows_the_exact_run() -> None:
    data = make_image_data(per_client=UNEQUAL)
    common = dict(data=data, model_fn=MODELS["mlp"], algorithm=FedAvg(), rounds=3,
                  cohort_size=4, client=ClientConfig(epochs=1, batch_size=4, lr=0.1), seed=1)
    runs = {mode: Simulation(fleet=FleetConfig(kind=FleetKind.VECTORIZED, chunk=2,
                                               aggregation=mode), **common).run()  # type: ignore[arg-type]
            for mode in AggregationMode}
    exact, reduced = runs[AggregationMode.EXACT], runs[AggregationMode.REDUCE]
    assert torch.allclose(reduced.final.params, exact.final.params, rtol=1e-5, atol=1e-6)
    assert reduced.series("train_loss") == pytest.approx(exact.series("train_loss"), rel=1e-5)


def test_not_reducible_aggregates_exactly_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    spec = make_spec(make_image_data(), MODELS["mlp"])  # not reducible (SCAFFOLD, Ditto, ...)
    with caplog.at_level(logging.WARNING, logger="fedloom.fleets.reduce"):
        fleet = make_fleet(FleetConfig(kind=FleetKind.VECTORIZED,
                                       aggregation=AggregationMode.REDUCE), spec)
    assert isinstance(fleet, VectorizedFleet) and not fleet.reduces
    assert "not reducible" in caplog.text
    tasks = make_tasks(spec, [CONFIGS["plain"]] * 3)
    got = [o for o in fleet.fit(1, tasks) if isinstance(o, ClientResult)]
    assert len({id(o.params) for o in got}) == 3  # every update, as in exact mode


def test_reduce_is_refused_where_no_fleet_implements_it() -> None:
    for kind in (FleetKind.SERIAL, FleetKind.THREAD):
        with pytest.raises(ConfigError, match="aggregation"):
            FleetConfig(kind=kind, aggregation=AggregationMode.REDUCE)


def test_process_reduce_is_the_exact_mean_and_leaves_dead_jobs_out() -> None:
    """Two workers each sum their jobs' updates; the parent adds the jobs' sums. A job whose
    worker died (client 1 exits, client 2 is killed: tests/fleets/test_process.py's hook)
    contributes failures, never its row."""
    from tests.fleets.test_process import DEATH_ROUND, MODEL_FN, SPEC, serial_outcomes, tasks_for

    spec = dataclasses.replace(SPEC, reducible=True)
    fleet = make_fleet(FleetConfig(kind=FleetKind.PROCESS, workers=2, threads=1,
                                   aggregation=AggregationMode.REDUCE), spec)
    try:
        assert fleet.reduces  # type: ignore[attr-defined]
        params = fleet.layout.flatten(MODEL_FN().state_dict())  # type: ignore[attr-defined]
        for rnd in (1, DEATH_ROUND):
            tasks = tasks_for(rnd, range(5), params)
            expected = [o for o in serial_outcomes(tasks).values()
                        if isinstance(o, ClientResult)]
            got = fleet.fit(rnd, tasks)
            ok = [o for o in got if isinstance(o, ClientResult)]
            dead = {o.client_id for o in got if isinstance(o, ClientFailure)}
            keep = [o for o in expected if o.client_id not in dead]
            mean = weighted_mean([o.params for o in keep], [o.num_examples for o in keep])
            assert {o.client_id for o in ok} == {o.client_id for o in keep}
            assert all(o.params is ok[0].params for o in ok)
            assert torch.allclose(ok[0].params, mean, rtol=1e-5, atol=1e-6)
            assert dead == (set() if rnd == 1 else {1, 2})
    finally:
        fleet.close()
