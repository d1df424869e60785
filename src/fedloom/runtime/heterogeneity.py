"""System heterogeneity in simulation: dropouts and stragglers, as in the FedProx paper.

Dropouts (``cohort.dropout``) are sampled clients that never answer. Stragglers
(``client.straggler_fraction``) cannot finish their local work in time: an algorithm that keeps
partial work (FedProx) lets each run a random number of epochs in ``[1, E - 1]`` (a random
fraction of its steps when ``client.steps`` is set); every other algorithm drops them, as FedAvg
does in the FedProx paper's experiments. Both draws are seeded by (seed, round).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedloom.core.packages import ClientConfig, Downlink
from fedloom.core.rng import SERVER, Purpose, torch_generator


@dataclass(frozen=True, slots=True, kw_only=True)
class Heterogeneity:
    """Which tasks run this round, and which clients were dropped or slowed."""

    tasks: list[Downlink]
    dropped: list[int]
    stragglers: list[int]


def _pick(ids: Sequence[int], fraction: float, gen: torch.Generator) -> list[int]:
    k = round(len(ids) * fraction)
    chosen = torch.randperm(len(ids), generator=gen)[:k].tolist()
    return sorted(ids[i] for i in chosen)


def partial_work(cfg: ClientConfig, gen: torch.Generator) -> ClientConfig:
    """A straggler's reduced local work: 1..E-1 epochs, or 1..steps-1 steps."""
    if cfg.steps is not None:
        if cfg.steps < 2:
            return cfg
        return dataclasses.replace(cfg, steps=int(torch.randint(1, cfg.steps, (1,),
                                                                generator=gen)))
    if cfg.epochs < 2:
        return cfg
    return dataclasses.replace(cfg, epochs=int(torch.randint(1, cfg.epochs, (1,),
                                                             generator=gen)))


def apply(tasks: Sequence[Downlink], *, round: int, seed: int, dropout: float,
          straggler_fraction: float, keeps_partial_work: bool) -> Heterogeneity:
    """Drop and slow clients of this round's tasks."""
    if dropout == 0 and straggler_fraction == 0:
        return Heterogeneity(tasks=list(tasks), dropped=[], stragglers=[])
    gen = torch_generator(seed, round, SERVER, Purpose.DROPOUT)
    dropped = set(_pick([t.client_id for t in tasks], dropout, gen))
    alive = [t for t in tasks if t.client_id not in dropped]
    gen = torch_generator(seed, round, SERVER, Purpose.STRAGGLER)
    slow = set(_pick([t.client_id for t in alive], straggler_fraction, gen))
    if not keeps_partial_work:
        return Heterogeneity(tasks=[t for t in alive if t.client_id not in slow],
                             dropped=sorted(dropped | slow), stragglers=sorted(slow))
    run = [dataclasses.replace(t, config=partial_work(t.config, gen)) if t.client_id in slow
           else t for t in alive]
    return Heterogeneity(tasks=run, dropped=sorted(dropped), stragglers=sorted(slow))
