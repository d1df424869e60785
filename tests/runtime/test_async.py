"""Async FL on a simulated clock: staleness functions by hand, FedAsync/FedBuff end to end."""

from __future__ import annotations

import pytest
import torch

from fedloom import ClientConfig, DataConfig, ModelConfig, load_federated, model_factory
from fedloom.algorithms.asynchronous import (
    FedAsync,
    FedAsyncOptions,
    FedBuff,
    FedBuffOptions,
    Staleness,
    staleness_weight,
)
from fedloom.core.errors import ConfigError
from fedloom.core.packages import ClientResult
from fedloom.runtime.clock import ClientClock, ClockConfig, SpeedModel
from fedloom.runtime.simulated_clock import local_steps
from fedloom.runtime.simulation import AsyncSimulation


def test_staleness_functions_by_hand() -> None:
    assert staleness_weight(Staleness.CONSTANT, 7, 0.5, 4) == 1.0
    assert staleness_weight(Staleness.POLYNOMIAL, 3, 0.5, 4) == pytest.approx(0.5)  # 4^-0.5
    assert staleness_weight(Staleness.HINGE, 4, 0.5, 4) == 1.0
    assert staleness_weight(Staleness.HINGE, 8, 0.5, 4) == pytest.approx(1 / 3)  # 1/(0.5*4+1)


def _result(value: float) -> ClientResult:
    return ClientResult(round=1, client_id=0, params=torch.tensor([value]), num_examples=1,
                        num_steps=1)


def test_fedasync_mixing_weight_by_hand() -> None:
    algo = FedAsync(FedAsyncOptions(alpha=0.5, staleness=Staleness.POLYNOMIAL, a=1.0))
    state = algo.init(torch.tensor([0.0]))
    new, changed = algo.on_result(state, _result(4.0), torch.tensor([0.0]), staleness=1)
    assert changed and new.round == 1
    assert new.params.item() == pytest.approx(1.0)  # 0.5 * (1+1)^-1 * 4


def test_fedbuff_waits_for_a_full_buffer() -> None:
    algo = FedBuff(FedBuffOptions(buffer_size=2, server_lr=1.0, staleness=Staleness.CONSTANT))
    s = algo.init(torch.tensor([1.0]))
    s1, changed = algo.on_result(s, _result(3.0), torch.tensor([1.0]), 0)
    assert not changed and s1.params.item() == 1.0
    s2, changed = algo.on_result(s1, _result(0.0), torch.tensor([2.0]), 1)
    assert changed and s2.round == 1
    assert s2.params.item() == pytest.approx(1.0 + (2.0 + -2.0) / 2)


def test_bad_options_name_the_key() -> None:
    with pytest.raises(ConfigError, match="buffer_size"):
        FedBuffOptions(buffer_size=0)
    with pytest.raises(ConfigError, match=r"alpha = 1\.5"):
        FedAsyncOptions(alpha=1.5)


def test_clock_and_local_steps() -> None:
    clock = ClientClock(ClockConfig(speed=SpeedModel.PARETO), num_clients=50, seed=0)
    assert min(clock.step_time) >= 1.0 and max(clock.step_time) > 3.0
    assert clock.duration(3, 10) == pytest.approx(10 * clock.step_time[3])
    assert local_steps(25, ClientConfig(epochs=2, batch_size=10)) == 6
    assert local_steps(25, ClientConfig(batch_size=0, epochs=3)) == 3
    assert local_steps(25, ClientConfig(steps=7)) == 7


@pytest.mark.parametrize("algorithm", [FedAsync(), FedBuff(FedBuffOptions(buffer_size=3))])
def test_async_run_learns_and_logs_simulated_time(algorithm: FedAsync | FedBuff) -> None:
    data = load_federated(DataConfig(name="synthetic", num_clients=12), seed=0)
    model_fn = model_factory(ModelConfig(name="logreg"), data.input_shape, data.num_classes)
    sim = AsyncSimulation(data=data, model_fn=model_fn, algorithm=algorithm,
                          client=ClientConfig(lr=0.01, batch_size=10), versions=8,
                          clock=ClockConfig(speed=SpeedModel.PARETO, concurrency=4), threads=1)
    history = sim.run()
    times = history.series("sim_time")
    assert [r["round"] for r in history.rows] == list(range(1, 9))
    assert times == sorted(times) and times[0] > 0  # type: ignore[type-var]
    assert history.rows[-1]["test_accuracy"] is not None
    first, last = history.rows[0]["test_loss"], history.rows[-1]["test_loss"]
    assert last < first  # type: ignore[operator]
