"""A seeded permutation of ``range(n)`` read one position at a time, in O(1) memory.

``KeyedPermutation(n, key)[i]`` is position ``i`` of a pseudo-random order of ``0 .. n-1``: a
4-round balanced Feistel network on the smallest ``2h``-bit domain holding ``n`` (round
function: the splitmix64 finaliser of the round key xor the right half), walked along its cycle
until the value falls inside ``range(n)`` (the domain is under ``4 n``, so fewer than 4 steps on
average). A Feistel network is a bijection for any round function and cycle walking keeps it
one on the subset, so every client appears exactly once per pass, however many are registered,
without the ``n``-entry list ``torch.randperm`` would need. Pure Python integer arithmetic: the
same order on every platform.

Example:
    >>> p = KeyedPermutation(10, key=42)
    >>> sorted(p[i] for i in range(10))
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
"""

from __future__ import annotations

import hashlib

MASK64 = (1 << 64) - 1
ROUNDS = 4


def mix64(x: int) -> int:
    """splitmix64's finaliser: a bijective scramble of a 64-bit integer."""
    z = (x + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


class KeyedPermutation:
    """Position ``i`` of a pseudo-random permutation of ``range(n)`` keyed by ``key``."""

    def __init__(self, n: int, key: int) -> None:
        if n < 1:
            raise ValueError(f"KeyedPermutation: n = {n} must be >= 1")
        self.n = n
        self.half = max(1, ((n - 1).bit_length() + 1) // 2)
        self.mask = (1 << self.half) - 1
        self.keys = [int.from_bytes(hashlib.blake2b(f"{key}:{r}".encode(), digest_size=8)
                                    .digest(), "little") for r in range(ROUNDS)]

    def __len__(self) -> int:
        return self.n

    def _encrypt(self, x: int) -> int:
        left, right = x >> self.half, x & self.mask
        for k in self.keys:
            left, right = right, left ^ (mix64(k ^ right) & self.mask)
        return (left << self.half) | right

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(f"position {i} of a permutation of {self.n}")
        x = self._encrypt(i)
        while x >= self.n:  # cycle walking: the next value of x's cycle inside range(n)
            x = self._encrypt(x)
        return x
