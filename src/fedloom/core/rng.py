"""Deterministic random generators keyed by (seed, round, client_id, purpose).

Library code never touches torch's or numpy's global generators. Every random draw comes from a
generator derived here, so the same seed gives the same run whatever fleet runs the clients and in
whatever order they are scheduled.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

import numpy as np
import torch

#: ``client_id`` used for draws that belong to the server, not to one client.
SERVER = -1


class Purpose(StrEnum):
    """What a random stream is used for; each gets an independent stream."""

    INIT = "init"
    COHORT = "cohort"
    BATCHES = "batches"
    PARTITION = "partition"
    DATA = "data"
    DROPOUT = "dropout"
    STRAGGLER = "straggler"
    NOISE = "noise"
    PERSONAL = "personal"
    SPEED = "speed"
    SUBSTITUTE = "substitute"


def derive_seed(seed: int, round: int, client_id: int, purpose: str) -> int:
    """A 63-bit seed that depends on every part of the key and nothing else."""
    key = f"{seed}:{round}:{client_id}:{purpose}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def torch_generator(seed: int, round: int, client_id: int, purpose: str,
                    device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator for one (seed, round, client, purpose) stream."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, round, client_id, purpose))
    return gen


def numpy_generator(seed: int, round: int, client_id: int, purpose: str) -> np.random.Generator:
    """A numpy generator for one (seed, round, client, purpose) stream."""
    return np.random.default_rng(derive_seed(seed, round, client_id, purpose))


def choose(n: int, k: int, gen: torch.Generator) -> list[int]:
    """``k`` distinct integers of ``range(n)``, sorted, in O(k) time and memory (Floyd's
    algorithm), uniformly over the k-subsets."""
    chosen: set[int] = set()
    for j in range(n - k, n):
        t = int(torch.randint(0, j + 1, (), generator=gen))
        chosen.add(j if t in chosen else t)
    return sorted(chosen)
