"""A chunk's whole round of batches as one (steps x K x B) index tensor, built before training.

Each client's batches are exactly those of the serial trainer (:func:`batch_order` with the
client's own ``(seed, round, client_id, "batches")`` generator). Clients are masked, never padded
with fake examples: a batch shorter than B is filled with one of the client's own indices at
weight 0, and a client with no batch at step t has count 0 there (it does not move).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedloom.core.packages import Downlink
from fedloom.core.rng import Purpose, torch_generator
from fedloom.training.trainer import batch_order


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """The batches of K clients for one round.

    Attributes:
        idx: (steps, K, B) example indices; padding repeats one of the client's own indices.
        counts: (steps, K) real examples in each batch (0: the client does not step).
        weights: (steps, K, B) 1.0 for real examples, 0.0 for padding.
        steps: local steps per client.
        full: per step, whether every client has a full batch (nothing to mask).
    """

    idx: torch.Tensor
    counts: torch.Tensor
    weights: torch.Tensor
    steps: tuple[int, ...]
    full: tuple[bool, ...]

    @property
    def num_steps(self) -> int:
        return int(self.idx.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.idx.shape[2])


def client_batches(task: Downlink, indices: torch.Tensor, seed: int,
                   purpose: str = Purpose.BATCHES) -> list[torch.Tensor]:
    """The serial trainer's batches for this task, in order (``purpose`` names the stream)."""
    cfg = task.config
    if indices.shape[0] == 0:
        raise ValueError(f"client {task.client_id} has no training examples")
    gen = torch_generator(seed, task.round, task.client_id, purpose)
    return list(batch_order(indices, cfg.batch_size, epochs=cfg.epochs, steps=cfg.steps,
                            generator=gen))


def build_schedule(batches: Sequence[Sequence[torch.Tensor]]) -> Schedule:
    """Stack K clients' batch lists (each non-empty) into one masked schedule."""
    k = len(batches)
    steps = tuple(len(b) for b in batches)
    num_steps = max(steps)
    size = max(int(b.shape[0]) for bs in batches for b in bs)
    idx = torch.empty((num_steps, k, size), dtype=torch.long)
    counts = torch.zeros((num_steps, k), dtype=torch.long)
    for j, bs in enumerate(batches):
        sizes = [int(b.shape[0]) for b in bs]
        flat = torch.cat(list(bs))
        idx[:, j, :] = flat[0]
        counts[:len(bs), j] = torch.tensor(sizes)
        if all(s == size for s in sizes[:-1]):  # the usual case: only the last may be short
            n = len(bs)
            idx[:n - 1, j, :] = flat[:(n - 1) * size].view(n - 1, size)
            idx[n - 1, j, :sizes[-1]] = flat[(n - 1) * size:]
        else:
            for t, b in enumerate(bs):
                idx[t, j, :sizes[t]] = b
    weights = (torch.arange(size) < counts.unsqueeze(-1)).to(torch.float32)
    full = tuple(bool(v) for v in (counts == size).all(dim=1).tolist())
    return Schedule(idx=idx, counts=counts, weights=weights, steps=steps, full=full)


def pad_clients(sched: Schedule, k: int) -> Schedule:
    """``sched`` with clients added up to ``k`` that never step (count 0, weight 0 everywhere,
    indices repeating the first client's: real examples, never read with any weight)."""
    extra = k - int(sched.idx.shape[1])
    if extra <= 0:
        return sched
    steps = sched.num_steps
    return Schedule(
        idx=torch.cat([sched.idx, sched.idx[:, :1].expand(-1, extra, -1)], dim=1),
        counts=torch.cat([sched.counts, sched.counts.new_zeros((steps, extra))], dim=1),
        weights=torch.cat([sched.weights, sched.weights.new_zeros(
            (steps, extra, sched.batch_size))], dim=1),
        steps=sched.steps, full=(False,) * steps)
