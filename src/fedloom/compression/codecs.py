"""Uplink codecs of flat float tensors: what a client would send instead of its float32 update.

Every codec turns a 1-D float32 tensor into an :class:`Encoded` (the tensors that would travel,
nothing else) and back, states its size on the wire for ``numel`` values without looking at
the data (:meth:`Codec.nbytes`), so a simulation counts the bytes a deployment would send, and
checks a received payload before decoding it (:meth:`Codec.validate`, see :mod:`.payload`).

- ``fp16``: float16 values, 2n bytes; error ``2**-11 |x| + 2**-25`` per value (values clamped to
  +-65504, never infinite).
- ``bf16``: bfloat16 values, 2n bytes; error ``2**-8 |x| + 2**-133`` per value.
- ``qsgd``: one float32 norm per block and a signed level per value: 2 bits for 1 level,
  4 bits for up to 7 (packed, as ``level + levels``), int8 up to 127, else int16:
  ``ceil(n bits / 8) + 4 ceil(n / block)`` bytes; error ``norm(block) / levels``; unbiased.
- ``topk`` (:mod:`.sparse`): the k largest magnitudes as float32 values and their indices in
  the smallest encoding for the density, ``4k + index_bytes(k, n)``; exact on the k kept, 0
  elsewhere.
- ``randk`` (:mod:`.sparse`): k values at indices drawn from a seed (the 8-byte seed travels
  instead of the indices), 4k + 8 bytes; exact on the k kept, 0 elsewhere.
- ``sign``: scaled sign (EF-SignSGD, Karimireddy et al. 2019): one bit per value (packed 8 to a
  byte) and one float32 scale per block, the block's mean magnitude ``||x_b||_1 / |b|``:
  ceil(n / 8) + 4 ceil(n / block) bytes; each value decodes to ``+-scale`` with its sign (0 as +).
- ``powersgd`` (:mod:`.powersgd`): rank-r factors of each matrix of the model.

``k = max(1, ceil(ratio * n))``. Random draws (QSGD's rounding, random-k's indices) come from the
generator the caller passes (:func:`fedloom.core.rng.torch_generator`), never a global one.
Sparsifiers and sign-less quantisers are meant to run with error feedback
(:func:`with_feedback`, Seide et al. 2014; Stich et al. 2018): the part of the update a client
could not send is kept and added to its next one.

Example:
    >>> codec = TopK(ratio=0.5)
    >>> enc = codec.encode(torch.tensor([0.1, -3.0, 2.0, 0.5]), None)
    >>> codec.decode(enc), codec.nbytes(4)
    (tensor([ 0., -3.,  2.,  0.]), 9)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from fedloom.compression import bits
from fedloom.compression.payload import (
    Codec,
    Encoded,
    Invalid,
    InvalidPayload,
    expect,
    expect_finite,
    expect_non_negative,
    refuse_if,
    to_float16,
)
from fedloom.compression.sparse import RandK, TopK, kept
from fedloom.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Float16:
    """IEEE half precision; values beyond +-65504 are clamped (never infinite)."""

    name: str = "fp16"

    def encode(self, x: torch.Tensor, gen: torch.Generator | None) -> Encoded:
        return Encoded(tensors={"values": to_float16(x)}, numel=x.numel())

    def decode(self, enc: Encoded) -> torch.Tensor:
        return enc.tensors["values"].to(torch.float32)

    def nbytes(self, numel: int) -> int:
        return 2 * numel

    def validate(self, enc: Encoded) -> None:
        expect(enc, {"values": (torch.float16, enc.numel)})
        expect_finite(enc, "values")


@dataclass(frozen=True, slots=True)
class BFloat16:
    """bfloat16: float32's range, 8 bits of significand."""

    name: str = "bf16"

    def encode(self, x: torch.Tensor, gen: torch.Generator | None) -> Encoded:
        return Encoded(tensors={"values": x.to(torch.bfloat16)}, numel=x.numel())

    def decode(self, enc: Encoded) -> torch.Tensor:
        return enc.tensors["values"].to(torch.float32)

    def nbytes(self, numel: int) -> int:
        return 2 * numel

    def validate(self, enc: Encoded) -> None:
        expect(enc, {"values": (torch.bfloat16, enc.numel)})
        expect_finite(enc, "values")


@dataclass(frozen=True, slots=True, kw_only=True)
class QSGD:
    """Stochastic uniform quantisation (Alistarh et al. 2017) with ``levels`` levels per sign
    and one L2 norm per block of ``block`` values: ``x_i -> norm * sign(x_i) * l_i / levels``
    with ``l_i`` rounded up with probability ``levels |x_i| / norm - floor(...)``, so the
    decoded tensor is unbiased. Levels travel packed as ``l + levels`` in 2 bits
    (``levels = 1``) or 4 bits (``levels <= 7``), else as int8 (``<= 127``) or int16."""

    levels: int = 127
    block: int = 4096
    name: str = "qsgd"

    def __post_init__(self) -> None:
        if not 1 <= self.levels <= 32767:
            raise ConfigError(f"compression.levels = {self.levels}: must be in [1, 32767]")
        if self.block < 1:
            raise ConfigError(f"compression block = {self.block}: must be >= 1")

    @property
    def bits(self) -> int:
        """Bits per value on the wire."""
        return 2 if self.levels == 1 else 4 if self.levels <= 7 else 8 if self.levels <= 127 else 16

    @property
    def dtype(self) -> torch.dtype:
        return {2: torch.uint8, 4: torch.uint8, 8: torch.int8, 16: torch.int16}[self.bits]

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        pad = (-x.numel()) % self.block
        return torch.nn.functional.pad(x, (0, pad)).view(-1, self.block)

    def encode(self, x: torch.Tensor, gen: torch.Generator | None) -> Encoded:
        blocks = self._blocks(x.to(torch.float32))
        magnitude = blocks.abs()
        # scaled by each block's largest magnitude: squares of values below ~1e-19 underflow
        # float32 (a 0 norm), above ~1e19 overflow it (an infinite one)
        top = magnitude.amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        norms = (magnitude / top).norm(dim=1, keepdim=True) * top
        scaled = magnitude * (self.levels / norms.clamp_min(torch.finfo(torch.float32).tiny))
        # floor(s + u), u uniform in [0, 1): s rounded up with probability s - floor(s)
        scaled += torch.rand(scaled.shape, generator=gen, dtype=torch.float32)
        level = torch.copysign(scaled.floor_().clamp_max_(self.levels), blocks)
        level = level.view(-1)[: x.numel()]
        codes = (bits.pack((level + self.levels).to(torch.uint8), self.bits) if self.bits < 8
                 else level.to(self.dtype))
        return Encoded(tensors={"norms": norms.view(-1), "levels": codes}, numel=x.numel())

    def _levels(self, enc: Encoded) -> torch.Tensor:
        codes = enc.tensors["levels"]
        if self.bits < 8:
            return bits.unpack(codes, self.bits, enc.numel) - self.levels
        return codes.to(torch.int64)

    def _scaled(self, enc: Encoded, levels: torch.Tensor) -> torch.Tensor:
        out = self._blocks(levels.to(torch.float32)) * enc.tensors["norms"].view(-1, 1)
        return (out / self.levels).view(-1)[: enc.numel]

    def decode(self, enc: Encoded) -> torch.Tensor:
        return self._scaled(enc, self._levels(enc))

    def nbytes(self, numel: int) -> int:
        return bits.packed_size(numel, self.bits) + 4 * math.ceil(numel / self.block)

    def validate(self, enc: Encoded) -> None:
        self._checked_levels(enc)

    def validate_decode(self, enc: Encoded) -> torch.Tensor:
        return self._scaled(enc, self._checked_levels(enc))

    def _checked_levels(self, enc: Encoded) -> torch.Tensor:
        """The payload's signed levels, once its tensors and levels are checked."""
        expect(enc, {"norms": (torch.float32, math.ceil(enc.numel / self.block)),
                     "levels": (self.dtype, bits.packed_size(enc.numel, self.bits)
                                if self.bits < 8 else enc.numel)})
        expect_finite(enc, "norms")
        expect_non_negative(enc, "norms")
        if self.bits < 8:
            refuse_if(not bits.padding_clear(enc.tensors["levels"], enc.numel * self.bits),
                      Invalid.BAD_VALUE, "levels: padding bits set")
        levels = self._levels(enc)
        if levels.numel():
            worst = int(levels.abs().max())
            refuse_if(worst > self.levels, Invalid.LEVEL_RANGE,
                      f"levels: |level| {worst} beyond the configured {self.levels}")
        return levels


#: each byte of packed sign bits as its 8 signs (+1.0 for a 0 bit, -1.0 for a 1 bit)
_SIGNS = 1 - 2 * bits.unpack_bools(torch.arange(256, dtype=torch.uint8)).view(256, 8).float()


@dataclass(frozen=True, slots=True, kw_only=True)
class Sign:
    """Scaled sign per block: the signs as bits, each block's mean magnitude as its scale."""

    block: int = 4096
    name: str = "sign"

    def __post_init__(self) -> None:
        if self.block < 1:
            raise ConfigError(f"compression.block = {self.block}: must be >= 1")

    def encode(self, x: torch.Tensor, gen: torch.Generator | None) -> Encoded:
        n = x.numel()
        blocks = math.ceil(n / self.block)
        padded = torch.zeros(blocks * self.block, dtype=torch.float32)
        padded[:n] = x
        counts = torch.full((blocks,), float(self.block))
        counts[-1] = n - (blocks - 1) * self.block
        scale = padded.view(blocks, self.block).abs().sum(dim=1) / counts
        return Encoded(tensors={"signs": bits.pack_bools(x < 0), "scale": scale}, numel=n)

    def decode(self, enc: Encoded) -> torch.Tensor:
        n = enc.numel
        blocks = enc.tensors["scale"].numel()
        magnitude = enc.tensors["scale"].unsqueeze(1).expand(blocks, self.block).reshape(-1)[:n]
        return _SIGNS[enc.tensors["signs"].long()].view(-1)[:n] * magnitude

    def nbytes(self, numel: int) -> int:
        return math.ceil(numel / 8) + 4 * math.ceil(numel / self.block)

    def validate(self, enc: Encoded) -> None:
        expect(enc, {"signs": (torch.uint8, math.ceil(enc.numel / 8)),
                     "scale": (torch.float32, math.ceil(enc.numel / self.block))})
        expect_finite(enc, "scale")
        expect_non_negative(enc, "scale")
        refuse_if(not bits.padding_clear(enc.tensors["signs"], enc.numel), Invalid.BAD_VALUE,
                  "signs: padding bits set")


@runtime_checkable
class WarmStarted(Protocol):
    """A codec that keeps client-local state between rounds (PowerSGD's factors): encoding
    takes the state the client kept (None in its first round) and returns the next one."""

    def encode_warm(self, x: torch.Tensor, warm: torch.Tensor | None,
                    gen: torch.Generator | None) -> tuple[Encoded, torch.Tensor]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One client's update through its codec: what travels, what the server decodes, and
    what the client keeps (the residual with error feedback, a warm-started codec's state)."""

    encoded: Encoded
    decoded: torch.Tensor
    residual: torch.Tensor | None
    warm: torch.Tensor | None


def compress_update(codec: Codec, update: torch.Tensor, *, residual: torch.Tensor | None,
                    warm: torch.Tensor | None, gen: torch.Generator | None,
                    feedback: bool) -> Step:
    """Encode ``update`` (plus ``residual`` with error feedback) and decode it again."""
    corrected = update if residual is None or not feedback else update + residual
    if isinstance(codec, WarmStarted):
        encoded, warm = codec.encode_warm(corrected, warm, gen)
    else:
        encoded, warm = codec.encode(corrected, gen), None
    decoded = codec.decode(encoded)
    return Step(encoded=encoded, decoded=decoded, warm=warm,
                residual=corrected - decoded if feedback else None)


def with_feedback(codec: Codec, update: torch.Tensor, residual: torch.Tensor | None,
                  gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Error feedback: ``update + residual`` is compressed; returns what the server decodes
    and the new residual (what was not sent): :func:`compress_update`'s, from a cold start."""
    step = compress_update(codec, update, residual=residual, warm=None, gen=gen, feedback=True)
    assert step.residual is not None  # feedback=True always keeps one
    return step.decoded, step.residual


__all__ = ["QSGD", "BFloat16", "Codec", "Encoded", "Float16", "Invalid", "InvalidPayload",
           "RandK", "Sign", "Step", "TopK", "WarmStarted", "compress_update", "kept",
           "with_feedback"]
