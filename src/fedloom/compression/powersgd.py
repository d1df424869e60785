"""PowerSGD (Vogels et al., NeurIPS 2019): rank-r factors of each matrix-shaped tensor.

Each tensor of the model with two or more dimensions is viewed as an ``n x m`` matrix ``M``
(its first dimension by the product of the rest: a conv weight ``(out, in, kh, kw)`` is
``out x (in kh kw)``). One power iteration per round, warm-started from the client's ``Q`` of
its previous round (a fresh Gaussian ``Q`` in its first):

    P = M Q;  P <- orthonormal basis of P (reduced QR);  Q <- M^T P;  M ~ P Q^T

The client sends ``P`` (``n x r``) and ``Q`` (``m x r``) as float32: ``4 r (n + m)`` bytes
instead of ``4 n m``. Vectors (biases, norms' scales) and matrices no smaller as factors
(``r (n + m) >= n m``) travel uncompressed, as in the paper. Decoding is ``P Q^T = P P^T M``,
the projection of ``M``'s columns onto the span of ``P``: exact for a matrix of rank <= r
(almost surely, from a Gaussian start), otherwise ``||M - P Q^T||_F <= ||M||_F`` and biased,
so it runs with error feedback (on by default).

In data-parallel training the paper all-reduces ``P`` before computing ``Q`` (two rounds of
communication, one shared ``P``). In federated learning each client computes its own ``P`` and
``Q`` from its own update and sends both in its one upload; the server decodes each client's
``P Q^T`` and averages those. The client keeps its ``Q`` (the warm start) beside its
error-feedback residual in the client-state store.

Example:
    >>> codec = PowerSGD(shapes=((200, 784), (200,)), rank=2)
    >>> codec.nbytes(200 * 784 + 200)  # P: 200 x 2, Q: 784 x 2, the bias as it is
    8672
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fedloom.compression.payload import (
    Encoded,
    Invalid,
    expect,
    expect_finite,
    expect_length,
    refuse_if,
)
from fedloom.core.errors import ConfigError
from fedloom.core.layout import ParamLayout

#: tolerance on the unit length of P's columns in a received payload
ORTHONORMAL_TOL = 1e-3


@dataclass(frozen=True, slots=True)
class _Matrix:
    offset: int
    rows: int
    cols: int


def _plan(shapes: tuple[tuple[int, ...], ...], rank: int) -> tuple[tuple[_Matrix, ...],
                                                                   torch.Tensor]:
    """The tensors sent as factors, and the flat positions of everything sent as it is."""
    matrices, raw, offset = [], [], 0
    for shape in shapes:
        numel = math.prod(shape)
        rows, cols = (shape[0], numel // shape[0]) if len(shape) >= 2 and numel else (1, numel)
        if len(shape) >= 2 and rank * (rows + cols) < rows * cols:
            matrices.append(_Matrix(offset, rows, cols))
        else:
            raw.append(torch.arange(offset, offset + numel))
        offset += numel
    return tuple(matrices), torch.cat(raw) if raw else torch.zeros(0, dtype=torch.int64)


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerSGD:
    """Rank-``rank`` PowerSGD of a flat vector made of tensors of ``shapes`` in order."""

    shapes: tuple[tuple[int, ...], ...]
    rank: int = 2
    name: str = "powersgd"
    _matrices: tuple[_Matrix, ...] = field(init=False, repr=False, compare=False)
    _raw: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"compression.rank = {self.rank}: must be >= 1")
        if any(d < 0 for s in self.shapes for d in s):
            raise ConfigError(f"PowerSGD shapes {self.shapes}: dimensions must be >= 0")
        matrices, raw = _plan(self.shapes, self.rank)
        object.__setattr__(self, "_matrices", matrices)
        object.__setattr__(self, "_raw", raw)

    @classmethod
    def for_layout(cls, layout: ParamLayout, rank: int = 2) -> PowerSGD:
        """The codec of ``layout``'s flat vector (every entry, buffers included)."""
        return cls(shapes=tuple(e.shape for e in layout.entries), rank=rank)

    @property
    def size(self) -> int:
        """The flat length this codec encodes."""
        return sum(math.prod(s) for s in self.shapes)

    def _factor_sizes(self) -> tuple[int, int]:
        return (sum(m.rows for m in self._matrices) * self.rank,
                sum(m.cols for m in self._matrices) * self.rank)

    def _check_length(self, numel: int) -> None:
        if numel != self.size:
            raise ValueError(f"PowerSGD of a {self.size}-value model given {numel} values")

    def encode(self, x: torch.Tensor, gen: torch.Generator | None) -> Encoded:
        return self.encode_warm(x, None, gen)[0]

    def encode_warm(self, x: torch.Tensor, warm: torch.Tensor | None,
                    gen: torch.Generator | None) -> tuple[Encoded, torch.Tensor]:
        """Encode ``x`` with one power iteration from ``warm`` (the Q factors this client
        sent last round, None: Gaussian); returns the payload and the Q factors to keep."""
        self._check_length(x.numel())
        x = x.to(torch.float32)
        q_size = self._factor_sizes()[1]
        if warm is not None and warm.numel() != q_size:
            raise ValueError(f"PowerSGD warm start of {warm.numel()} values, expected {q_size}")
        if warm is None:
            warm = torch.randn(q_size, generator=gen, dtype=torch.float32)
        ps, qs, at = [], [], 0
        for m in self._matrices:
            matrix = x[m.offset:m.offset + m.rows * m.cols].view(m.rows, m.cols)
            q = warm[at:at + m.cols * self.rank].view(m.cols, self.rank)
            at += m.cols * self.rank
            p = torch.linalg.qr(matrix @ q, mode="reduced").Q
            ps.append(p.reshape(-1))
            qs.append((matrix.T @ p).reshape(-1))
        q_all = torch.cat(qs) if qs else torch.zeros(0)
        p_all = torch.cat(ps) if ps else torch.zeros(0)
        enc = Encoded(tensors={"p": p_all, "q": q_all, "raw": x[self._raw]}, numel=x.numel())
        return enc, q_all.clone()

    def decode(self, enc: Encoded) -> torch.Tensor:
        out = torch.empty(enc.numel, dtype=torch.float32)
        out[self._raw] = enc.tensors["raw"]
        p_all, q_all = enc.tensors["p"], enc.tensors["q"]
        at_p = at_q = 0
        for m in self._matrices:
            p = p_all[at_p:at_p + m.rows * self.rank].view(m.rows, self.rank)
            q = q_all[at_q:at_q + m.cols * self.rank].view(m.cols, self.rank)
            at_p, at_q = at_p + m.rows * self.rank, at_q + m.cols * self.rank
            out[m.offset:m.offset + m.rows * m.cols] = (p @ q.T).view(-1)
        return out

    def nbytes(self, numel: int) -> int:
        self._check_length(numel)
        return 4 * (sum(self._factor_sizes()) + self._raw.numel())

    def validate(self, enc: Encoded) -> None:
        expect_length(enc)
        refuse_if(enc.numel != self.size, Invalid.SHAPE,
                  f"declared length {enc.numel}, the model has {self.size} values")
        p_size, q_size = self._factor_sizes()
        expect(enc, {"p": (torch.float32, p_size), "q": (torch.float32, q_size),
                     "raw": (torch.float32, self._raw.numel())})
        expect_finite(enc, "p", "q", "raw")
        at = 0
        for m in self._matrices:  # unit columns keep |P Q^T| <= r max|Q| (checked below)
            p = enc.tensors["p"][at:at + m.rows * self.rank].view(m.rows, self.rank)
            at += m.rows * self.rank
            norms = p.norm(dim=0)
            refuse_if(bool(((norms - 1).abs() > ORTHONORMAL_TOL).any()), Invalid.BAD_VALUE,
                      f"p: a column of the factor at offset {m.offset} has length "
                      f"{float(norms.min()):.4g}..{float(norms.max()):.4g}, not 1")
        q = enc.tensors["q"]
        if q.numel():
            bound = float(q.abs().max()) * self.rank * (1 + ORTHONORMAL_TOL)
            refuse_if(bound > torch.finfo(torch.float32).max, Invalid.NON_FINITE,
                      "q: values so large that P Q^T overflows float32")


__all__ = ["PowerSGD"]
