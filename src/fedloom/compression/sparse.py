"""Sparsifiers: top-k and random-k, and the index encodings top-k chooses between by density.

Top-k sends its ``k`` sorted indices (of ``n``) in whichever of three encodings is smallest
for ``(k, n)``; the choice depends on ``k`` and ``n`` only, so sender and receiver make it
alike and :meth:`TopK.nbytes` is exact without seeing the data:

- ``int32``: the indices as they are, ``4k`` bytes.
- ``bitmap``: one bit per position, ``ceil(n / 8)`` bytes (dense updates).
- ``elias_fano`` (Elias 1974, Fano 1971): each index split into ``L`` low bits, stored as they
  are (``ceil(kL / 8)`` bytes), and a high part ``i >> L``, stored in unary as a bit vector
  with a one at ``high_j + j`` for the j-th index (``ceil((k + ((n - 1) >> L) + 1) / 8)``
  bytes); ``L`` is the width in [0, 31] that makes the total smallest. About
  ``k (2 + log2(n / k))`` bits: 1,993 of 199,210 indices take 2,134 bytes instead of 7,972.

Plain int32 indices are smallest only for a single index among more than ``2**27`` values
(4 bytes against Elias-Fano's 5); otherwise Elias-Fano takes well under 32 bits an index.

Random-k sends an 8-byte seed instead of indices (smaller than any index encoding).

Both send their values as float32, or as float16 (``values=float16``: 2 bytes a value, clamped
to +-65504). With error feedback the rounding error of a kept value joins the residual and is
sent later, as in Qsparse-local-SGD (Basu et al. 2019): a sparsifier followed by a quantiser is
still a contraction, which is what error feedback's convergence needs.

Example:
    >>> TopK(ratio=0.01).index_coding(199_210), TopK(ratio=0.01).nbytes(199_210)
    (('elias_fano', 6), 10106)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from enum import StrEnum

import torch

from fedloom.compression import bits
from fedloom.compression.payload import (
    Encoded,
    Invalid,
    expect,
    expect_finite,
    expect_length,
    refuse_if,
    to_float16,
)
from fedloom.core.errors import ConfigError

INT32, BITMAP, ELIAS_FANO = "int32", "bitmap", "elias_fano"


class Values(StrEnum):
    """The dtype a sparsifier's kept values travel in."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self is Values.FLOAT16 else torch.float32

    def cast(self, x: torch.Tensor) -> torch.Tensor:
        return to_float16(x) if self is Values.FLOAT16 else x.to(torch.float32)


def kept(ratio: float, numel: int) -> int:
    """How many values a sparsifier of density ``ratio`` keeps of ``numel``."""
    return min(numel, max(1, math.ceil(ratio * numel)))


def _check_ratio(ratio: float) -> None:
    if not 0 < ratio <= 1:
        raise ConfigError(f"compression.ratio = {ratio}: must be in (0, 1]")


def _ef_sizes(k: int, n: int, low: int) -> tuple[int, int]:
    """Elias-Fano's (low part, high part) bytes for ``k`` of ``n`` with ``low`` low bits."""
    return bits.packed_size(k, low), bits.packed_size(k + ((n - 1) >> low) + 1, 1)


@functools.lru_cache(maxsize=256)
def index_coding(k: int, n: int) -> tuple[str, int]:
    """The smallest encoding of ``k`` sorted distinct indices of ``n``: (name, low bits); ties
    go to the first of bitmap, Elias-Fano (fewest low bits first), int32. Cached: every
    encode, check and decode of a run asks it for the same few ``(k, n)``."""
    options = [(bits.packed_size(n, 1), BITMAP, 0)]
    options += [(sum(_ef_sizes(k, n, low)), ELIAS_FANO, low) for low in range(32)]
    options.append((4 * k, INT32, 0))
    _, name, low = min(options, key=lambda o: o[0])  # min keeps the first of equals
    return name, low


def index_bytes(k: int, n: int) -> int:
    name, low = index_coding(k, n)
    if name == INT32:
        return 4 * k
    return bits.packed_size(n, 1) if name == BITMAP else sum(_ef_sizes(k, n, low))


def encode_indices(idx: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """Sorted distinct int64 indices of ``n`` in the encoding :func:`index_coding` picks."""
    k = idx.numel()
    name, low = index_coding(k, n)
    if name == INT32:
        return {"indices": idx.to(torch.int32)}
    if name == BITMAP:
        mask = torch.zeros(n, dtype=torch.bool)
        mask[idx] = True
        return {"bitmap": bits.pack_bools(mask)}
    high = torch.zeros(k + ((n - 1) >> low) + 1, dtype=torch.bool)
    high[(idx >> low) + torch.arange(k)] = True
    return {"ef_low": bits.pack(idx & ((1 << low) - 1), low), "ef_high": bits.pack_bools(high)}


def _expect_indices(enc: Encoded, k: int, values: torch.dtype) -> None:
    n = enc.numel
    name, low = index_coding(k, n)
    if name == INT32:
        expect(enc, {"indices": (torch.int32, k), "values": (values, k)})
        return
    if name == BITMAP:
        expect(enc, {"bitmap": (torch.uint8, bits.packed_size(n, 1)),
                     "values": (values, k)})
        refuse_if(not bits.padding_clear(enc.tensors["bitmap"], n), Invalid.INDEX_RANGE,
                  f"bitmap: a bit set past position {n - 1}")
        ones = int(bits.unpack_bools(enc.tensors["bitmap"]).sum())
        refuse_if(ones != k, Invalid.SHAPE, f"bitmap: {ones} bits set, expected {k}")
        return
    low_bytes, high_bytes = _ef_sizes(k, n, low)
    expect(enc, {"ef_low": (torch.uint8, low_bytes), "ef_high": (torch.uint8, high_bytes),
                 "values": (values, k)})
    refuse_if(not bits.padding_clear(enc.tensors["ef_low"], k * low), Invalid.BAD_VALUE,
              "ef_low: padding bits set")
    refuse_if(not bits.padding_clear(enc.tensors["ef_high"], k + ((n - 1) >> low) + 1),
              Invalid.BAD_VALUE, "ef_high: padding bits set")
    ones = int(bits.unpack_bools(enc.tensors["ef_high"]).sum())
    refuse_if(ones != k, Invalid.SHAPE, f"ef_high: {ones} bits set, expected {k}")


def decode_indices(enc: Encoded, k: int) -> torch.Tensor:
    """The int64 indices of a payload :func:`encode_indices` wrote (no checks)."""
    name, low = index_coding(k, enc.numel)
    if name == INT32:
        return enc.tensors["indices"].to(torch.int64)
    if name == BITMAP:
        return bits.unpack_bools(enc.tensors["bitmap"], enc.numel).nonzero().view(-1)
    ones = bits.unpack_bools(enc.tensors["ef_high"]).nonzero().view(-1)
    return ((ones - torch.arange(k)) << low) | bits.unpack(enc.tensors["ef_low"], low, k)


def validate_indices(enc: Encoded, k: int, values: torch.dtype = torch.float32
                     ) -> torch.Tensor:
    """Check a top-k payload's tensors (k ``values`` beside the indices in any encoding);
    returns the decoded indices, checked strictly increasing and in ``[0, numel)``."""
    _expect_indices(enc, k, values)
    idx = decode_indices(enc, k)
    if idx.numel():
        refuse_if(int(idx.min()) < 0 or int(idx.max()) >= enc.numel, Invalid.INDEX_RANGE,
                  f"indices span [{int(idx.min())}, {int(idx.max())}], length {enc.numel}")
    steps = idx[1:] - idx[:-1]
    refuse_if(bool((steps <= 0).any()), Invalid.INDEX_DUPLICATE,
              "indices repeated or out of order (they travel sorted, each once)")
    return idx


def _scatter(enc: Encoded, idx: torch.Tensor) -> torch.Tensor:
    """A sparsifier's payload as the dense float32 tensor: its values at ``idx``, 0 elsewhere."""
    out = torch.zeros(enc.numel, dtype=torch.float32)
    out[idx] = enc.tensors["values"].float()
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class TopK:
    """The ``ceil(ratio * n)`` values of largest magnitude (ties broken by ``torch.topk``),
    as ``values`` (float32 or float16) and their indices in the smallest encoding for the
    density."""

    ratio: float = 0.01
    values: Values = Values.FLOAT32
    name: str = "topk"

    def __post_init__(self) -> None:
        _check_ratio(self.ratio)

    def index_coding(self, numel: int) -> tuple[str, int]:
        return index_coding(kept(self.ratio, numel), numel)

    def encode(self, x: torch.Tensor, gen: torch.Generator | None) -> Encoded:
        n = x.numel()
        idx = x.abs().topk(kept(self.ratio, n), sorted=False).indices.sort().values
        return Encoded(tensors={**encode_indices(idx, n), "values": self.values.cast(x[idx])},
                       numel=n)

    def decode(self, enc: Encoded) -> torch.Tensor:
        return _scatter(enc, decode_indices(enc, kept(self.ratio, enc.numel)))

    def nbytes(self, numel: int) -> int:
        k = kept(self.ratio, numel)
        return self.values.dtype.itemsize * k + index_bytes(k, numel)

    def validate(self, enc: Encoded) -> None:
        self._checked_indices(enc)

    def validate_decode(self, enc: Encoded) -> torch.Tensor:
        return _scatter(enc, self._checked_indices(enc))

    def _checked_indices(self, enc: Encoded) -> torch.Tensor:
        """The payload's indices, once its tensors, indices and values are checked."""
        expect_length(enc, minimum=1)
        idx = validate_indices(enc, kept(self.ratio, enc.numel), self.values.dtype)
        expect_finite(enc, "values")
        return idx


@dataclass(frozen=True, slots=True, kw_only=True)
class RandK:
    """``ceil(ratio * n)`` values at indices drawn uniformly without replacement from a seed;
    the seed travels instead of the indices. Not rescaled (a contraction, for error feedback)."""

    ratio: float = 0.01
    values: Values = Values.FLOAT32
    name: str = "randk"

    def __post_init__(self) -> None:
        _check_ratio(self.ratio)

    def _indices(self, seed: int, numel: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randperm(numel, generator=gen)[: kept(self.ratio, numel)]

    def encode(self, x: torch.Tensor, gen: torch.Generator | None) -> Encoded:
        seed = int(torch.randint(0, 2**62, (), generator=gen))
        return Encoded(tensors={"seed": torch.tensor(seed, dtype=torch.int64),
                                "values": self.values.cast(x[self._indices(seed, x.numel())])},
                       numel=x.numel())

    def decode(self, enc: Encoded) -> torch.Tensor:
        return _scatter(enc, self._indices(int(enc.tensors["seed"]), enc.numel))

    def nbytes(self, numel: int) -> int:
        return self.values.dtype.itemsize * kept(self.ratio, numel) + 8

    def validate(self, enc: Encoded) -> None:
        expect_length(enc, minimum=1)
        expect(enc, {"seed": (torch.int64, 1), "values": (self.values.dtype,
                                                          kept(self.ratio, enc.numel))})
        seed = int(enc.tensors["seed"].reshape(()))
        refuse_if(not 0 <= seed < 2**62, Invalid.BAD_VALUE, f"seed {seed}: must be in [0, 2**62)")
        expect_finite(enc, "values")


__all__ = ["BITMAP", "ELIAS_FANO", "INT32", "RandK", "TopK", "Values", "decode_indices",
           "encode_indices", "index_bytes", "index_coding", "kept", "validate_indices"]
