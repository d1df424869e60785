"""Uplink codecs of flat float tensors: what a client would send instead of its float32 update.

Every codec turns a 1-D float32 tensor into an :class:`Encoded` (the tensors that would travel,
nothing else) and back, and states its size on the wire for ``numel`` values without looking at
the data (:meth:`Codec.nbytes`), so a simulation counts the bytes a deployment would send.

- ``fp16``: float16 values, 2n bytes; error ``2**-11 |x| + 2**-25`` per value (values clamped to
  +-65504, never infinite).
- ``bf16``: bfloat16 values, 2n bytes; error ``2**-8 |x| + 2**-133`` per value.
- ``qsgd``: one float32 norm per block and a signed level per value (int8 up to 127 levels, else
  int16), n + 4 ceil(n / block) bytes with int8; error ``norm(block) / levels``; unbiased.
- ``topk``: the k largest magnitudes as int32 indices + float32 values, 8k bytes; exact on the k
  kept, 0 elsewhere.
- ``randk``: k values at indices drawn from a seed (the 8-byte seed travels instead of the
  indices), 4k + 8 bytes; exact on the k kept, 0 elsewhere.
- ``sign``: scaled sign (EF-SignSGD, Karimireddy et al. 2019): one bit per value (packed 8 to a
  byte) and one float32 scale per block, the block's mean magnitude ``||x_b||_1 / |b|``:
  ceil(n / 8) + 4 ceil(n / block) bytes; each value decodes to ``+-scale`` with its sign (0 as +).

``k = max(1, ceil(ratio * n))``. Random draws (QSGD's rounding, random-k's indices) come from the
generator the caller passes (:func:`fedloom.core.rng.torch_generator`), never a global one.
Sparsifiers and sign-less quantisers are meant to run with error feedback
(:func:`with_feedback`, Seide et al. 2014; Stich et al. 2018): the part of the update a client
could not send is kept and added to its next one.

Example:
    >>> codec = TopK(ratio=0.5)
    >>> enc = codec.encode(torch.tensor([0.1, -3.0, 2.0, 0.5]), None)
    >>> codec.decode(enc), codec.nbytes(4)
    (tensor([ 0., -3.,  2.,  0.]), 16)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from fedloom.core.errors import ConfigError

FP16_MAX = 65504.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Encoded:
    """A compressed flat tensor: the tensors that would travel and the length it decodes to."""

    tensors: dict[str, torch.Tensor]
    numel: int

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


class Codec(Protocol):
    """A lossy or lossless encoding of a flat float32 tensor."""

    @property
    def name(self) -> str: ...

    def encode(self, x: torch.Tensor, gen: torch.Generator | None) -> Encoded: ...

    def decode(self, enc: Encoded) -> torch.Tensor: ...

    def nbytes(self, numel: int) -> int:
        """The bytes :meth:`encode` produces for ``numel`` values (whatever they are)."""
        ...


@dataclass(frozen=True, slots=True)
class Float16:
    """IEEE half precision; values beyond +-65504 are clamped (never infinite)."""

    name: str = "fp16"

    def encode(self, x: torch.Tensor, gen: torch.Generator | None) -> Encoded:
        return Encoded(tensors={"values": x.clamp(-FP16_MAX, FP16_MAX).to(torch.float16)},
                       numel=x.numel())

    def decode(self, enc: Encoded) -> torch.Tensor:
        return enc.tensors["values"].to(torch.float32)

    def nbytes(self, numel: int) -> int:
        return 2 * numel


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


@dataclass(frozen=True, slots=True, kw_only=True)
class QSGD:
    """Stochastic uniform quantisation (Alistarh et al. 2017) with ``levels`` levels per sign
    and one L2 norm per block of ``block`` values: ``x_i -> norm * sign(x_i) * l_i / levels``
    with ``l_i`` rounded up with probability ``levels |x_i| / norm - floor(...)``, so the
    decoded tensor is unbiased. Levels travel as int8 (``levels <= 127``) or int16."""

    levels: int = 127
    block: int = 4096
    name: str = "qsgd"

    def __post_init__(self) -> None:
        if not 1 <= self.levels <= 32767:
            raise ConfigError(f"compression.levels = {self.levels}: must be in [1, 32767]")
        if self.block < 1:
            raise ConfigError(f"compression block = {self.block}: must be >= 1")

    @property
    def dtype(self) -> torch.dtype:
        return torch.int8 if self.levels <= 127 else torch.int16

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        pad = (-x.numel()) % self.block
        return torch.nn.functional.pad(x, (0, pad)).view(-1, self.block)

    def encode(self, x: torch.Tensor, gen: torch.Generator | None) -> Encoded:
        blocks = self._blocks(x.to(torch.float32))
        norms = blocks.norm(dim=1, keepdim=True)
        scaled = blocks.abs() / norms.clamp_min(torch.finfo(torch.float32).tiny) * self.levels
        low = scaled.floor()
        up = torch.rand(scaled.shape, generator=gen, dtype=torch.float32) < (scaled - low)
        level = (low + up).clamp_max(self.levels) * blocks.sign()
        return Encoded(tensors={"norms": norms.view(-1),
                                "levels": level.view(-1)[: x.numel()].to(self.dtype)},
                       numel=x.numel())

    def decode(self, enc: Encoded) -> torch.Tensor:
        levels = self._blocks(enc.tensors["levels"].to(torch.float32))
        out = levels * enc.tensors["norms"].view(-1, 1) / self.levels
        return out.view(-1)[: enc.numel]

    def nbytes(self, numel: int) -> int:
        return numel * (1 if self.dtype == torch.int8 else 2) + 4 * math.ceil(numel / self.block)


def kept(ratio: float, numel: int) -> int:
    """How many values a sparsifier of density ``ratio`` keeps of ``numel``."""
    return min(numel, max(1, math.ceil(ratio * numel)))


def _check_ratio(ratio: float) -> None:
    if not 0 < ratio <= 1:
        raise ConfigError(f"compression.ratio = {ratio}: must be in (0, 1]")


@dataclass(frozen=True, slots=True, kw_only=True)
class TopK:
    """The ``ceil(ratio * n)`` values of largest magnitude, as int32 indices and float32 values
    (ties broken by ``torch.topk``)."""

    ratio: float = 0.01
    name: str = "topk"

    def __post_init__(self) -> None:
        _check_ratio(self.ratio)

    def encode(self, x: torch.Tensor, gen: torch.Generator | None) -> Encoded:
        idx = x.abs().topk(kept(self.ratio, x.numel()), sorted=False).indices.sort().values
        return Encoded(tensors={"indices": idx.to(torch.int32), "values": x[idx].float()},
                       numel=x.numel())

    def decode(self, enc: Encoded) -> torch.Tensor:
        out = torch.zeros(enc.numel, dtype=torch.float32)
        out[enc.tensors["indices"].long()] = enc.tensors["values"]
        return out

    def nbytes(self, numel: int) -> int:
        return 8 * kept(self.ratio, numel)


@dataclass(frozen=True, slots=True, kw_only=True)
class RandK:
    """``ceil(ratio * n)`` values at indices drawn uniformly without replacement from a seed;
    the seed travels instead of the indices. Not rescaled (a contraction, for error feedback)."""

    ratio: float = 0.01
    name: str = "randk"

    def __post_init__(self) -> None:
        _check_ratio(self.ratio)

    def _indices(self, seed: int, numel: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randperm(numel, generator=gen)[: kept(self.ratio, numel)]

    def encode(self, x: torch.Tensor, gen: torch.Generator | None) -> Encoded:
        seed = int(torch.randint(0, 2**62, (), generator=gen))
        return Encoded(tensors={"seed": torch.tensor(seed, dtype=torch.int64),
                                "values": x[self._indices(seed, x.numel())].float()},
                       numel=x.numel())

    def decode(self, enc: Encoded) -> torch.Tensor:
        out = torch.zeros(enc.numel, dtype=torch.float32)
        out[self._indices(int(enc.tensors["seed"]), enc.numel)] = enc.tensors["values"]
        return out

    def nbytes(self, numel: int) -> int:
        return 4 * kept(self.ratio, numel) + 8


_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


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
        bits = torch.zeros(math.ceil(n / 8) * 8, dtype=torch.uint8)
        bits[:n] = (x < 0).to(torch.uint8)
        packed = (bits.view(-1, 8) * _BITS).sum(dim=1, dtype=torch.uint8)
        return Encoded(tensors={"signs": packed, "scale": scale}, numel=n)

    def decode(self, enc: Encoded) -> torch.Tensor:
        n = enc.numel
        bits = (enc.tensors["signs"].unsqueeze(1) & _BITS).ne(0).view(-1)[:n]
        magnitude = enc.tensors["scale"].repeat_interleave(self.block)[:n]
        return torch.where(bits, -magnitude, magnitude)

    def nbytes(self, numel: int) -> int:
        return math.ceil(numel / 8) + 4 * math.ceil(numel / self.block)


def with_feedback(codec: Codec, update: torch.Tensor, residual: torch.Tensor | None,
                  gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Error feedback: ``update + residual`` is compressed; returns what the server decodes
    and the new residual (what was not sent)."""
    corrected = update if residual is None else update + residual
    decoded = codec.decode(codec.encode(corrected, gen))
    return decoded, corrected - decoded


__all__ = ["QSGD", "BFloat16", "Codec", "Encoded", "Float16", "RandK", "Sign", "TopK", "kept",
           "with_feedback"]
