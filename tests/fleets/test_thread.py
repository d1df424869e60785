"""The thread fleet: bitwise equal to the serial fleet whatever the scheduling."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
import torch

from fedloom import ClientConfig, ClientFailure, ClientResult, FedAvg, Simulation
from fedloom.algorithms.base import LocalSpec
from fedloom.core.packages import Downlink, split_outcomes
from fedloom.fleets import Fleet, FleetConfig, FleetKind
from fedloom.fleets.thread import ThreadFleet
from fedloom.models import mlp
from fedloom.training.evaluation import CentralEvaluator
from fedloom.training.spec import ClientSpec
from tests.conftest import make_image_data

DATA = make_image_data()
MODEL_FN = functools.partial(mlp, (1, 6, 6), 4, 8)
CONFIGS = [ClientConfig(epochs=2, batch_size=4, lr=0.05),
           ClientConfig(epochs=1, batch_size=5, lr=0.1, momentum=0.9, weight_decay=1e-3)]


def simulation(cfg: ClientConfig, fleet: str | FleetConfig = "serial") -> Simulation:
    return Simulation(data=DATA, model_fn=MODEL_FN, algorithm=FedAvg(), client=cfg, rounds=3,
                      cohort_size=3, seed=5, threads=1, fleet=fleet, eval_batch_size=8)


def user_loop(fleet: Fleet, cfg: ClientConfig) -> torch.Tensor:
    sim = simulation(cfg)
    state = sim.state
    for rnd in range(1, 4):
        tasks = sim.algorithm.configure(rnd, state, sim.sampler.sample(rnd), cfg)
        ok, failed = split_outcomes(fleet.fit(rnd, tasks), sim.layout.size)
        assert not failed
        state = sim.algorithm.aggregate(rnd, state, ok)
    return state.params


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def fleet(request: pytest.FixtureRequest) -> Iterator[ThreadFleet]:
    spec = simulation(CONFIGS[0]).spec
    with ThreadFleet(spec, FleetConfig(kind=FleetKind.THREAD, workers=request.param)) as f:
        yield f


@pytest.mark.parametrize("cfg", CONFIGS)
def test_thread_fleet_is_bitwise_the_serial_fleet(fleet: ThreadFleet, cfg: ClientConfig) -> None:
    serial = simulation(cfg).run()
    assert not torch.equal(serial.final.params, simulation(cfg).initial_params)
    assert torch.equal(user_loop(fleet, cfg), serial.final.params)


def test_simulation_on_threads_evaluates_like_the_server() -> None:
    threaded = simulation(CONFIGS[1], FleetConfig(kind=FleetKind.THREAD, workers=2)).run()
    serial = simulation(CONFIGS[1]).run()
    assert torch.equal(threaded.final.params, serial.final.params)
    for a, b in zip(threaded.rows, serial.rows):
        assert abs(a["test_loss"] - b["test_loss"]) < 1e-6  # type: ignore[operator]
        assert a["test_accuracy"] == b["test_accuracy"]


def test_evaluation_is_spread_over_threads(fleet: ThreadFleet) -> None:
    params = simulation(CONFIGS[0]).initial_params
    got = fleet.evaluate(params)
    want = CentralEvaluator(model_fn=MODEL_FN, test=DATA.test, batch_size=8)(params)
    assert got is not None
    assert abs(got["test_loss"].value - want["test_loss"].value) < 1e-6
    assert got["test_accuracy"] == want["test_accuracy"]


def raise_for_client_2(result: ClientResult, downlink: Downlink) -> ClientResult:
    if downlink.client_id == 2:
        raise ValueError("NaN loss")
    return result


def test_a_client_that_raises_is_a_failure_value() -> None:
    spec = ClientSpec(model_fn=MODEL_FN, train=DATA.train, client_indices=DATA.client_train,
                      seed=0, local=LocalSpec(finish=raise_for_client_2))
    params = simulation(CONFIGS[0]).initial_params
    tasks = [Downlink(round=1, client_id=c, params=params, config=CONFIGS[0]) for c in (3, 2, 0)]
    with ThreadFleet(spec, FleetConfig(kind=FleetKind.THREAD, workers=2)) as f:
        out = f.fit(1, tasks)
    assert [o.client_id for o in out] == [0, 2, 3]
    assert isinstance(out[1], ClientFailure) and "ValueError: NaN loss" in out[1].message
    assert isinstance(out[0], ClientResult) and isinstance(out[2], ClientResult)


def test_torch_threads_are_set_while_open_and_restored_on_close() -> None:
    before = torch.get_num_threads()
    spec = simulation(CONFIGS[0]).spec
    f = ThreadFleet(spec, FleetConfig(kind=FleetKind.THREAD, workers=2, threads=1))
    f.evaluate(simulation(CONFIGS[0]).initial_params)
    assert torch.get_num_threads() == 1
    f.close()
    assert torch.get_num_threads() == before
