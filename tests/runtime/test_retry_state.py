"""A round's attempt that fails leaves no client state behind: the retried round's state is
what it would be had the failed attempt never run (SCAFFOLD's c stays sum_i p_i c_i)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from fedloom import ClientConfig, DataConfig, ModelConfig, Simulation, load_federated, model_factory
from fedloom.algorithms.client_store import DiskStore, MemoryStore
from fedloom.algorithms.scaffold import Scaffold
from fedloom.core.packages import ClientResult, Downlink, Outcome
from fedloom.fleets.base import Fleet, WrappedFleet


class FirstAttemptOverflows(WrappedFleet):
    """The first fit's results carry finite parameters whose mean's norm overflows float32 (so
    the aggregate is not adopted and the round is retried); later fits are the inner fleet's."""

    def __init__(self, inner: Fleet) -> None:
        super().__init__(inner)
        self.cohorts: list[list[int]] = []

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]:
        out = self.inner.fit(round, tasks)
        self.cohorts.append([t.client_id for t in tasks])
        if len(self.cohorts) > 1:
            return out
        return [dataclasses.replace(o, params=torch.full_like(o.params, 1e19))
                if isinstance(o, ClientResult) else o for o in out]


@pytest.mark.parametrize("disk", [False, True])
def test_a_retried_round_keeps_only_the_adopted_attempts_client_state(
        disk: bool, tmp_path: Path, one_thread: None) -> None:
    data = load_federated(DataConfig(name="synthetic", num_clients=12), seed=0)
    model_fn = model_factory(ModelConfig(name="logreg"), data.input_shape, data.num_classes)
    store = DiskStore(tmp_path, 12) if disk else MemoryStore()
    algo = Scaffold(num_examples=data.example_counts(), store=store)
    sim = Simulation(data=data, model_fn=model_fn, algorithm=algo, rounds=1, cohort_size=4,
                     client=ClientConfig(lr=0.05, batch_size=10), eval_every=10)
    assert sim.store is store  # the algorithm's store is the run's
    fleet = sim.fleet = FirstAttemptOverflows(sim.fleet)
    sim.retries = 1
    rows = sim.run().rows
    assert rows[-1]["round_attempts"] == 2
    failed, adopted = fleet.cohorts
    assert set(failed) != set(adopted)
    stored = dict(store.items())
    assert {cid for (_, cid) in stored} == set(adopted)
    share = algo.share
    c = sum((share[cid] * v for (_, cid), v in stored.items()), torch.zeros(1))
    assert torch.allclose(sim.state.extras["c"], c, atol=1e-7)


@pytest.mark.parametrize("disk", [False, True])
def test_staged_writes_wait_for_commit(disk: bool, tmp_path: Path) -> None:
    store: MemoryStore | DiskStore = DiskStore(tmp_path, 4) if disk else MemoryStore()
    store.put(0, "c", torch.tensor([1.0, 2.0]))  # no attempt open: written through
    store.begin()
    store.put(0, "c", torch.tensor([3.0, 4.0]))
    store.put(1, "c", torch.tensor([5.0, 6.0]))
    assert _values(store.get(0, "c")) == [3.0, 4.0]  # the attempt reads its own writes
    assert [k for k, _ in store.items()] == [("c", 0)]  # what is kept so far
    store.discard()
    assert _values(store.get(0, "c")) == [1.0, 2.0] and store.get(1, "c") is None
    store.begin()
    store.put(1, "c", torch.tensor([5.0, 6.0]))
    store.commit()
    assert [(k, v.tolist()) for k, v in store.items()] == [
        (("c", 0), [1.0, 2.0]), (("c", 1), [5.0, 6.0])]


def _values(t: torch.Tensor | None) -> list[float]:
    assert t is not None
    return [float(v) for v in t.tolist()]


def test_a_bad_write_fails_where_it_is_made_even_while_staged(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, 4)
    store.put(0, "c", torch.zeros(2))
    store.begin()
    with pytest.raises(ValueError, match="3 values for client 1"):
        store.put(1, "c", torch.zeros(3))
    with pytest.raises(IndexError, match="client 9"):
        store.put(9, "c", torch.zeros(2))


def test_a_disk_store_holds_an_attempts_rows_on_disk(tmp_path: Path) -> None:
    """DiskStore keeps what an open attempt wrote in a sparse staging file, not in memory, and
    frees it again (the file sparse) once the attempt is committed or discarded."""
    store = DiskStore(tmp_path, 1000)
    store.put(3, "c", torch.zeros(4096))
    store.begin()
    for cid in range(100):
        store.put(cid, "c", torch.full((4096,), float(cid)))
    assert store._pending is not None and set(store._pending.values()) == {None}
    staged = tmp_path / "c.staged.f32"
    assert staged.stat().st_blocks * 512 >= 100 * 4096 * 4
    assert _values(store.get(7, "c"))[:2] == [7.0, 7.0]
    store.commit()
    assert staged.stat().st_blocks == 0 and _values(store.get(99, "c"))[0] == 99.0
    assert [k for k, _ in store.items()] == [("c", cid) for cid in range(100)]
