"""SCAFFOLD and FedDyn over 2**20 (> a million) registered clients: state on disk, global
sums kept incrementally, nothing held per registered client.

Hand-computed cases: every client holds 4 examples, so p_i = 4 / 2**22 = 2**-20 and every value
below is exact in float32. The Python heap's peak over the whole case stays under 2 MiB, where a
list of the clients' shares alone would take ~33 MiB.
"""

from __future__ import annotations

import pickle
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from fedloom.algorithms.client_store import DiskStore
from fedloom.algorithms.feddyn import FedDyn, FedDynOptions
from fedloom.algorithms.scaffold import Scaffold
from fedloom.core.counts import Repeated
from fedloom.core.packages import ClientConfig, ClientResult, ServerState

N = 2**20
LAST = N - 1
P = 2.0**-20
CLIENT = ClientConfig(lr=0.1, steps=1)


@contextmanager
def heap_peak_below(mib: float) -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < mib * 2**20, f"peak {peak / 2**20:.1f} MiB"


def result(cid: int, params: list[float], **extras: list[float]) -> ClientResult:
    return ClientResult(round=1, client_id=cid, params=torch.tensor(params), num_examples=4,
                        num_steps=1, extras={k: torch.tensor(v) for k, v in extras.items()})


def test_scaffold_over_a_million_clients(tmp_path: Path) -> None:
    with heap_peak_below(2.0):
        algo = Scaffold(num_examples=Repeated(4, N), num_trainable=4,
                        store=DiskStore(tmp_path, N))
        state = ServerState(round=0, params=torch.zeros(4), extras=algo.init_extras(
            torch.zeros(4)))
        state = algo.aggregate(1, state, [result(5, [1.0] * 4, c_i=[1, 2, 3, 4]),
                                          result(LAST, [3.0] * 4, c_i=[4, 4, 4, 4])])
        assert torch.equal(state.params, torch.full((4,), 2.0))
        assert torch.equal(state.extras["c"], torch.tensor([5.0, 6, 7, 8]) * P)
        first, fresh = algo.configure(2, state, [5, 7], CLIENT)
        assert torch.equal(first.extras["correction"],
                           torch.tensor([5.0, 6, 7, 8]) * P - torch.tensor([1.0, 2, 3, 4]))
        assert torch.equal(fresh.extras["correction"], state.extras["c"])  # no c_i yet
        state = algo.aggregate(2, state, [result(5, [2.0] * 4, c_i=[0, 0, 0, 0])])
        assert torch.equal(state.extras["c"], torch.full((4,), 4 * P))  # c + p (0 - c_5)
        stored = algo.store.get(5, "c")
        assert stored is not None and torch.equal(stored, torch.zeros(4))
    assert sorted(cid for (_, cid), _ in algo.store.items()) == [5, LAST]


def test_feddyn_over_a_million_clients(tmp_path: Path) -> None:
    with heap_peak_below(2.0):
        algo = FedDyn(FedDynOptions(alpha=0.5), num_examples=Repeated(4, N), num_trainable=4,
                      store=DiskStore(tmp_path, N))
        state = ServerState(round=0, params=torch.zeros(4), extras=algo.init_extras(
            torch.zeros(4)))
        state = algo.aggregate(1, state, [result(5, [2.0] * 4, h_i=[-1.0] * 4),
                                          result(LAST, [4.0] * 4, h_i=[-2.0] * 4)])
        # h = -alpha sum p_i (w_i - w) = -0.5 * 2**-20 * 6; w = mean - h / alpha
        assert torch.equal(state.extras["h"], torch.full((4,), -3 * P))
        assert torch.equal(state.params, torch.full((4,), 3 + 6 * P))
        mine, fresh = algo.configure(2, state, [LAST, 9], CLIENT)
        assert torch.equal(mine.extras["h_i"], torch.full((4,), -2.0))
        assert torch.equal(fresh.extras["h_i"], torch.zeros(4))


def test_disk_store_rows_round_trip_and_persist(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, N)
    assert store.get(3, "c") is None and list(store.items()) == []
    store.put(3, "c", torch.tensor([1.5, -2.0, 3.0]))
    store.put(LAST, "c", torch.tensor([4.0, 5.0, 6.0], dtype=torch.float64))  # kept as float32
    store.put(0, "h", torch.ones(2, 2))
    got = store.get(3, "c")
    assert got is not None and torch.equal(got, torch.tensor([1.5, -2.0, 3.0]))
    got.zero_()  # a copy: the stored row is unchanged
    assert torch.equal(store.get(3, "c"), torch.tensor([1.5, -2.0, 3.0]))  # type: ignore[arg-type]
    again = pickle.loads(pickle.dumps(store))  # another process reopens the same files
    assert [(k, v.tolist()) for k, v in again.items()] == [
        (("c", 3), [1.5, -2.0, 3.0]), (("c", LAST), [4.0, 5.0, 6.0]), (("h", 0), [1.0] * 4)]
    later = DiskStore(tmp_path, N)  # a resumed run finds the state on disk
    assert torch.equal(later.get(LAST, "c"), torch.tensor([4.0, 5.0, 6.0]))  # type: ignore[arg-type]
    assert (tmp_path / "c.f32").stat().st_blocks * 512 < 2**20  # sparse: 12 MiB long
    later.clear()
    assert later.get(3, "c") is None and list(later.items()) == []
    with pytest.raises(ValueError, match="4 values for client 5, the store's rows hold 3"):
        later.put(5, "c", torch.zeros(4))
    with pytest.raises(IndexError, match=f"client {N}"):
        later.get(N, "c")


def test_disk_store_rows_cost_the_same_at_a_million_clients(tmp_path: Path) -> None:
    """Positional reads and writes: a memory-mapped file faulted ~10 ms per new row here."""
    store = DiskStore(tmp_path, N)
    start = time.perf_counter()
    for cid in range(0, N, N // 100):
        store.put(cid, "c", torch.full((610,), float(cid)))
        assert store.get(cid, "c")[0] == cid  # type: ignore[index]
    assert time.perf_counter() - start < 0.5  # ~5 ms expected; the mapped file took ~2 s
