"""Shamir secret sharing of 32-byte secrets over the prime field ``GF(2^521 - 1)``.

A secret is the constant term of a random polynomial of degree ``t - 1``; holder ``x`` (a
nonzero field element: fedloom uses ``client_id + 1``) gets its value at ``x``. Any ``t``
shares give the secret back by Lagrange interpolation at 0; fewer reveal nothing.

Example:
    >>> shares = split(bytes(range(32)), threshold=2, holders=[1, 2, 3])
    >>> combine({x: shares[x] for x in (1, 3)}, threshold=2) == bytes(range(32))
    True
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

PRIME = (1 << 521) - 1  # a Mersenne prime above every 32-byte secret
SHARE_BYTES = 66
SECRET_BYTES = 32


class ShareError(ValueError):
    """Shares that cannot give a secret back (too few, or inconsistent)."""


def split(secret: bytes, *, threshold: int, holders: Sequence[int]) -> dict[int, bytes]:
    """The share of each holder (``SHARE_BYTES`` bytes each)."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret is {SECRET_BYTES} bytes, not {len(secret)}")
    if not 1 <= threshold <= len(holders) or len(set(holders)) != len(holders) \
            or any(not 0 < x < PRIME for x in holders):
        raise ValueError(f"threshold {threshold} with holders {list(holders)[:8]}: need "
                         "distinct nonzero holders, at least as many as the threshold")
    coeffs = [int.from_bytes(secret, "big")]
    coeffs += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coeffs, x).to_bytes(SHARE_BYTES, "big") for x in holders}


def combine(shares: Mapping[int, bytes], *, threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (the lowest ``threshold`` holders are
    used); ShareError when there are too few or they do not belong together."""
    if len(shares) < threshold:
        raise ShareError(f"{len(shares)} shares, the threshold is {threshold}")
    xs = sorted(shares)[:threshold]
    ys = [int.from_bytes(shares[x], "big") for x in xs]
    if any(len(shares[x]) != SHARE_BYTES or y >= PRIME for x, y in zip(xs, ys)):
        raise ShareError("a share is not an element of the field")
    secret = 0
    for i, (xi, yi) in enumerate(zip(xs, ys)):
        num = den = 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >> (8 * SECRET_BYTES):
        raise ShareError("the shares do not belong to one secret")
    return secret.to_bytes(SECRET_BYTES, "big")


def _evaluate(coeffs: Sequence[int], x: int) -> int:
    y = 0
    for c in reversed(coeffs):
        y = (y * x + c) % PRIME
    return y


__all__ = ["PRIME", "SECRET_BYTES", "SHARE_BYTES", "ShareError", "combine", "split"]
