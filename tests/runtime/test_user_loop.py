"""A user-owned loop (BlazeFL/FedLab style) computes exactly what Simulation.run computes."""

from __future__ import annotations

import pytest
import torch

from fedloom import ClientConfig, ClientError, ClientResult, Downlink, FedAvg, Simulation
from fedloom.core.packages import split_outcomes
from fedloom.models import mlp
from tests.conftest import make_image_data


def _sim(min_success: int | None = None) -> Simulation:
    data = make_image_data()
    return Simulation(data=data, model_fn=lambda: mlp((1, 6, 6), 4, 8), algorithm=FedAvg(),
                      client=ClientConfig(lr=0.05, batch_size=4), rounds=3, cohort_size=2,
                      seed=5, min_success=min_success)


def test_user_owned_loop_matches_run() -> None:
    expected = _sim().run().final.params
    sim = _sim()
    state = sim.algorithm.init(sim.initial_params)
    for rnd in range(1, 4):
        cohort = sim.sampler.sample(rnd)
        tasks = sim.algorithm.configure(rnd, state, cohort, sim.client)
        results, failures = split_outcomes(sim.fleet.fit(rnd, tasks), sim.layout.size)
        assert not failures
        state = sim.algorithm.aggregate(rnd, state, results)
    assert torch.equal(state.params, expected)


def _make_flaky(sim: Simulation) -> None:
    original = sim.fleet.trainer.fit  # type: ignore[attr-defined]

    def flaky(downlink: Downlink) -> ClientResult:
        if downlink.client_id == sim.sampler.sample(1)[0]:
            raise RuntimeError("boom")
        return original(downlink)  # type: ignore[no-any-return]

    sim.fleet.trainer.fit = flaky  # type: ignore[attr-defined]


def test_failed_client_is_a_value_and_the_round_goes_on() -> None:
    sim = _sim(min_success=1)
    _make_flaky(sim)
    history = sim.run()
    assert history.rows[0]["num_failures"] == 1
    assert history.rows[0]["num_results"] == 1


def test_too_few_successes_stop_the_run_keeping_the_last_state() -> None:
    sim = _sim()
    _make_flaky(sim)
    with pytest.raises(ClientError, match=r"only 1 of 2 clients succeeded.*RuntimeError: boom"):
        sim.run()
    assert sim.state.round == 0

