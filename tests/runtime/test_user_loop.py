"""A user-owned loop (BlazeFL/FedLab style) computes exactly what Simulation.run computes."""

from __future__ import annotations

import torch
from tests.conftest import make_image_data

from fedloom import ClientConfig, FedAvg, Simulation
from fedloom.models import mlp
from fedloom.runtime.simulation import split_outcomes


def _sim() -> Simulation:
    data = make_image_data()
    return Simulation(data=data, model_fn=lambda: mlp((1, 6, 6), 4, 8), algorithm=FedAvg(),
                      client=ClientConfig(lr=0.05, batch_size=4), rounds=3, cohort_size=2,
                      seed=5)


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


def test_failed_client_is_a_value_and_the_round_goes_on() -> None:
    sim = _sim()
    original = sim.fleet.trainer.fit  # type: ignore[attr-defined]

    def flaky(downlink):  # type: ignore[no-untyped-def]
        if downlink.client_id == sim.sampler.sample(1)[0]:
            raise RuntimeError("boom")
        return original(downlink)

    sim.fleet.trainer.fit = flaky  # type: ignore[attr-defined]
    history = sim.run()
    assert history.rows[0]["num_failures"] == 1
    assert history.rows[0]["num_results"] == 1
