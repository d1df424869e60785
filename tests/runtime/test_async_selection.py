"""FLSim's async user selectors: the documented factory and classes, the selector as a
parameter of the async loop (by name, FLSim-style object), FLSim's ordering of devices that
finish at the same simulated time, and the round-robin position in a checkpoint."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from fedloom import ClientConfig, DataConfig, ModelConfig, load_federated, model_factory
from fedloom.algorithms.asynchronous import FedAsync
from fedloom.core.counts import Excluding
from fedloom.core.errors import ConfigError
from fedloom.core.packages import ClientConfig as Cfg
from fedloom.core.packages import Downlink
from fedloom.fleets.serial import SerialFleet
from fedloom.runtime.async_selection import (
    AsyncUserSelectorFactory,
    AsyncUserSelectorInfo,
    AsyncUserSelectorType,
    ClientsProvider,
    RandomAsyncUserSelector,
    RoundRobinAsyncUserSelector,
)
from fedloom.runtime.clock import ClientClock, ClockConfig
from fedloom.runtime.simulated_clock import SimulatedClock
from fedloom.runtime.simulation import AsyncSimulation


class FLDataProviderFromList:
    """FLSim's data provider, as its selector tests build it: users are lists of examples."""

    def __init__(self, users: list[list[int]]) -> None:
        self.users = users

    def num_users(self) -> int:
        return len(self.users)

    def __getitem__(self, user_index: int) -> list[int]:
        return self.users[user_index]


def test_flsims_selectors_as_documented() -> None:
    num_users = 20
    provider = FLDataProviderFromList([list(range(i + 1)) for i in range(num_users)])
    rr = AsyncUserSelectorFactory.create_users_selector(AsyncUserSelectorType.ROUND_ROBIN,
                                                        provider)
    assert isinstance(rr, RoundRobinAsyncUserSelector)
    picks = [rr.get_random_user() for _ in range(2 * num_users + 3)]
    assert [p.user_index for p in picks] == [*range(num_users), *range(num_users), 0, 1, 2]
    assert all(len(p.user_data) == p.user_index + 1 for p in picks)  # type: ignore[arg-type]
    random = AsyncUserSelectorFactory.create_users_selector(AsyncUserSelectorType.RANDOM,
                                                            provider)
    assert isinstance(random, RandomAsyncUserSelector)
    seen = {random.get_random_user().user_index for _ in range(400)}
    assert seen == set(range(num_users))
    with pytest.raises(ConfigError, match="async user selector 'fastest'"):
        AsyncUserSelectorFactory.create_users_selector("fastest", provider)


def small_run(**kwargs: object) -> AsyncSimulation:
    data = load_federated(DataConfig(name="synthetic", num_clients=6), seed=0)
    model_fn = model_factory(ModelConfig(name="logreg"), data.input_shape, data.num_classes)
    return AsyncSimulation(data=data, model_fn=model_fn, algorithm=FedAsync(),
                           client=ClientConfig(lr=0.01, steps=2), versions=6, threads=1,
                           **kwargs)  # type: ignore[arg-type]


class Recording(RoundRobinAsyncUserSelector):
    """Round robin that records every hand-out."""

    def __init__(self, num_users: int) -> None:
        super().__init__(FLDataProviderFromList([[]] * num_users))
        self.calls: list[list[int]] = []

    def select(self, idle: Sequence[int], count: int, generator: torch.Generator) -> list[int]:
        chosen = super().select(idle, count, generator)
        self.calls.append(chosen)
        return chosen


def test_round_robin_in_the_loop_and_devices_finishing_together_go_first() -> None:
    """Constant speeds and equal steps: clients 0 and 1 finish at the same instant, so both
    are collected before anybody starts (FLSim's TRAINING_FINISHED < WAITING_FOR_START): the
    next hand-out starts 2 and 3 together, on the model that includes both updates."""
    selector = Recording(6)
    sim = small_run(clock=ClockConfig(concurrency=2), selector=selector)
    history = sim.run()
    assert selector.calls == [[0, 1], [2, 3], [4, 5]]
    assert [r["sim_time"] for r in history.rows] == [2.0, 2.0, 4.0, 4.0, 6.0, 6.0]
    assert sim.snapshot().info["selector"] == selector.position() == 0  # resumes the cycle


def test_the_selector_by_name_and_an_flsim_style_object() -> None:
    by_name = small_run(clock=ClockConfig(concurrency=2, selector="round_robin"))
    by_name.run()
    assert by_name.selector.position() == 0  # 6 clients handed out from 0: back at 0

    class OnlyFives:
        """A user's own FLSim-style selector: only get_random_user."""

        def get_random_user(self) -> AsyncUserSelectorInfo:
            return AsyncUserSelectorInfo(None, 5)

    history = small_run(clock=ClockConfig(concurrency=2), selector=OnlyFives()).run()
    assert len(history.rows) == 6  # client 5 alone trains every version
    with pytest.raises(ConfigError, match="selector"):
        ClockConfig(selector="fastest")


def test_the_default_random_selector_is_seeded() -> None:
    a = small_run(clock=ClockConfig(concurrency=3), seed=1).run()
    b = small_run(clock=ClockConfig(concurrency=3), seed=1).run()
    assert torch.equal(a.final.params, b.final.params)


def test_simulated_clock_orders_ties_by_start_and_holds_starts_until_they_are_collected() -> None:
    clock = SimulatedClock(SerialFleet.__new__(SerialFleet), num_clients=3,
                           clock=ClientClock(ClockConfig(), num_clients=3, seed=0))
    for cid in (2, 0):
        clock.submit(Downlink(round=1, client_id=cid, params=torch.zeros(1), config=Cfg(steps=3)))
    assert list(clock.idle_clients()) == [1]
    clock._queue[0].outcome = clock._queue[1].outcome = object()  # type: ignore[assignment]
    first = clock.collect(0.0)
    assert first is not None and first.task_id == 1 and clock.now() == 3.0
    assert list(clock.idle_clients()) == []  # client 0 also finished at 3.0: collect it first
    second = clock.collect(0.0)
    assert second is not None and second.task_id == 2
    assert list(clock.idle_clients()) == [0, 1, 2]


def test_selectors_over_a_million_idle_clients_hold_nothing_per_client() -> None:
    """A population's idle clients are every registered one but the busy few, as a view; the
    selectors draw from it in O(count): distinct, idle, reproducible, and uniform enough."""
    idle = Excluding(1_000_000, {5, 7, 999_999})
    random = RandomAsyncUserSelector(ClientsProvider(1_000_000))
    picks = random.select(idle, 50, torch.Generator().manual_seed(3))
    assert len(set(picks)) == 50 and all(p in idle for p in picks)
    assert picks == random.select(idle, 50, torch.Generator().manual_seed(3))
    many = [c for s in range(200)
            for c in random.select(idle, 50, torch.Generator().manual_seed(s))]
    assert 0.45 < sum(c < 500_000 for c in many) / len(many) < 0.55
    robin = RoundRobinAsyncUserSelector(ClientsProvider(1_000_000))
    assert robin.select(idle, 6, torch.Generator()) == [0, 1, 2, 3, 4, 6]
    robin.restore(999_998)
    assert robin.select(idle, 3, torch.Generator()) == [999_998, 0, 1]


def test_small_populations_draw_as_before() -> None:
    """Up to LARGE_POPULATION idle clients the random selector is a seeded permutation (the
    numbers of earlier runs), whether the idle clients come as a list or a view."""
    idle = Excluding(100, {4})
    want = [list(idle)[i] for i in torch.randperm(99, generator=torch.Generator().manual_seed(1))
            .tolist()[:5]]
    got = RandomAsyncUserSelector(ClientsProvider(100)).select(
        idle, 5, torch.Generator().manual_seed(1))
    assert got == want


def test_a_million_client_async_run_hands_out_from_a_view() -> None:
    """An async simulation over a generated million-client population runs, and its simulated
    clock's idle clients are a view, not a list of every registered client."""
    data = load_federated(DataConfig(name="generated", num_clients=1_000_000), seed=0)
    model_fn = model_factory(ModelConfig(name="logreg"), data.input_shape, data.num_classes)
    sim = AsyncSimulation(data=data, model_fn=model_fn, algorithm=FedAsync(),
                          client=ClientConfig(lr=0.01, steps=1, batch_size=10), versions=5,
                          threads=1, clock=ClockConfig(concurrency=20), eval_every=100)
    assert isinstance(sim.fleet.idle_clients(), Excluding)
    assert len(sim.run().rows) == 5
