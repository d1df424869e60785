"""Fixed-point vectors in the ring ``Z_{2^r}`` (numpy ``uint64``, which wraps modulo ``2^64``).

A client's input is ``[n * q(x_1), ..., n * q(x_P), n]``: its update ``x`` clipped, quantised
and pre-scaled by its example count ``n``, with ``n`` itself as the last element, so the sum
the server learns gives both ``sum_k n_k q(x_k)`` and ``sum_k n_k``.

Example:
    >>> q = Quantizer(clip_range=1.0, quant_bits=8, ring_bits=32)
    >>> v = encode(torch.tensor([0.5, -1.5]), 3, q)
    >>> decode_sum(add(v, v, q.ring_bits), q)
    (tensor([ 0.5039, -1.0000], dtype=torch.float64), 6)
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from fedloom.core.errors import AggregationError
from fedloom.secagg.config import Quantizer

Ring = NDArray[np.uint64]


def ring_mask(ring_bits: int) -> np.uint64:
    return np.uint64((1 << ring_bits) - 1) if ring_bits < 64 else np.uint64(2**64 - 1)


def quantize(update: torch.Tensor, q: Quantizer) -> NDArray[np.int64]:
    """Each coordinate clipped to ``[-clip_range, clip_range]`` and rounded to an integer of
    at most ``quant_bits`` bits (sign included). Non-finite values are refused."""
    x = update.detach().to(torch.float64).reshape(-1)
    if not bool(torch.isfinite(x).all()):
        raise AggregationError("the update holds NaN or infinite values; it cannot be "
                               "quantised for secure aggregation")
    clipped = x.clamp(-q.clip_range, q.clip_range).numpy()
    return np.rint(clipped * q.scale).astype(np.int64)


def encode(update: torch.Tensor, num_examples: int, q: Quantizer) -> Ring:
    """The client's ring vector: ``[n * quantize(update), n]`` (``P + 1`` values)."""
    if isinstance(num_examples, bool) or not 1 <= num_examples <= q.max_weight:
        raise AggregationError(f"num_examples = {num_examples!r}: secure aggregation needs "
                               f"an integer in [1, {q.max_weight}] for ring_bits = "
                               f"{q.ring_bits} and quant_bits = {q.quant_bits}")
    values = np.append(quantize(update, q) * np.int64(num_examples), np.int64(num_examples))
    return values.view(np.uint64) & ring_mask(q.ring_bits)


def add(a: Ring, b: Ring, ring_bits: int) -> Ring:
    return (a + b) & ring_mask(ring_bits)


def sub(a: Ring, b: Ring, ring_bits: int) -> Ring:
    return (a - b) & ring_mask(ring_bits)


def to_signed(v: Ring, ring_bits: int) -> NDArray[np.int64]:
    """Ring elements as signed integers in ``[-2^(r-1), 2^(r-1))``."""
    if ring_bits == 64:
        return v.view(np.int64)
    signed = v.astype(np.int64)
    signed[signed >= (1 << (ring_bits - 1))] -= np.int64(1 << ring_bits)
    return signed


def decode_sum(total: Ring, q: Quantizer) -> tuple[torch.Tensor, int]:
    """``(sum_k n_k x_k, sum_k n_k)`` (float64, up to quantisation) from the ring sum."""
    signed = to_signed(total, q.ring_bits)
    count = int(signed[-1])
    if not 1 <= count <= q.max_weight:
        raise AggregationError(f"the summed example count is {count}: it must be in "
                               f"[1, {q.max_weight}] (a client sent a bad input, or the sum "
                               "wrapped around the ring: raise secagg.ring_bits)")
    return torch.from_numpy(signed[:-1].astype(np.float64) / q.scale), count


def wire(v: Ring) -> torch.Tensor:
    """A ring vector as an int64 tensor (same bits) for the wire."""
    return torch.from_numpy(v.view(np.int64).copy())


def from_wire(t: torch.Tensor, size: int, ring_bits: int) -> Ring:
    """A ring vector back from the wire; raises ValueError when it is not ``size`` int64
    values below ``2^ring_bits``."""
    if t.dtype != torch.int64 or tuple(t.shape) != (size,):
        raise ValueError(f"need {size} int64 values, got {tuple(t.shape)} of {t.dtype}")
    v = t.numpy().view(np.uint64)
    if ring_bits < 64 and bool((v > ring_mask(ring_bits)).any()):
        raise ValueError(f"values outside Z_2^{ring_bits}")
    return v.copy()


__all__ = ["Ring", "add", "decode_sum", "encode", "from_wire", "quantize", "ring_mask", "sub",
           "to_signed", "wire"]
