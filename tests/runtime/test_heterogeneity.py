from __future__ import annotations

import torch

from fedloom.core.packages import ClientConfig, Downlink
from fedloom.runtime.heterogeneity import apply


def _tasks(n: int, cfg: ClientConfig) -> list[Downlink]:
    return [Downlink(round=1, client_id=c, params=torch.zeros(1), config=cfg) for c in range(n)]


def test_dropouts_and_dropped_stragglers() -> None:
    h = apply(_tasks(10, ClientConfig(epochs=20)), round=3, seed=0, dropout=0.2,
              straggler_fraction=0.5, keeps_partial_work=False)
    assert len(h.tasks) == 4 and len(h.stragglers) == 4 and len(h.dropped) == 6
    assert {t.client_id for t in h.tasks}.isdisjoint(h.dropped)
    assert all(t.config.epochs == 20 for t in h.tasks)


def test_partial_work_keeps_stragglers_with_fewer_epochs() -> None:
    h = apply(_tasks(10, ClientConfig(epochs=20)), round=3, seed=0, dropout=0.0,
              straggler_fraction=0.9, keeps_partial_work=True)
    assert len(h.tasks) == 10 and len(h.stragglers) == 9 and not h.dropped
    epochs = {t.client_id: t.config.epochs for t in h.tasks}
    assert all(1 <= epochs[c] <= 19 for c in h.stragglers)
    assert sum(e == 20 for e in epochs.values()) == 1


def test_same_seed_same_draws_and_no_heterogeneity_is_identity() -> None:
    tasks = _tasks(10, ClientConfig(epochs=5, steps=None))
    a = apply(tasks, round=2, seed=1, dropout=0.3, straggler_fraction=0.3, keeps_partial_work=True)
    b = apply(tasks, round=2, seed=1, dropout=0.3, straggler_fraction=0.3, keeps_partial_work=True)
    assert a == b
    same = apply(tasks, round=2, seed=1, dropout=0.0, straggler_fraction=0.0,
                 keeps_partial_work=True)
    assert same.tasks == tasks
