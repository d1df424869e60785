"""Fixed-width unsigned codes packed into bytes, most significant bit first.

``pack(codes, width)`` stores ``len(codes)`` codes of ``width`` bits (0 to 31) in
``packed_size(len(codes), width)`` bytes, the last byte's unused low bits zero;
``unpack(data, width, count)`` reads them back. Widths 1, 2, 4 and 8 (codes never straddle a
byte) take a shift-and-add path; any other width goes through one bit per value.

Example:
    >>> pack(torch.tensor([3, 0, 1]), 2).tolist(), unpack(torch.tensor([196]), 2, 3).tolist()
    ([196], [3, 0, 1])
"""

from __future__ import annotations

import math

import torch

_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def packed_size(count: int, width: int) -> int:
    """Bytes for ``count`` codes of ``width`` bits."""
    return math.ceil(count * width / 8)


def pack_bools(bits: torch.Tensor) -> torch.Tensor:
    """One bit per element of a bool tensor, 8 to a byte."""
    n = bits.numel()
    padded = torch.zeros(packed_size(n, 1) * 8, dtype=torch.uint8)
    padded[:n] = bits.reshape(-1)
    return (padded.view(-1, 8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)


def unpack_bools(data: torch.Tensor, count: int | None = None) -> torch.Tensor:
    """The bits of ``data`` as a bool tensor (all ``8 len(data)`` of them unless ``count``)."""
    bits = (data.unsqueeze(1) & _BIT_WEIGHTS).ne(0).view(-1)
    return bits if count is None else bits[:count]


def pack(codes: torch.Tensor, width: int) -> torch.Tensor:
    """``codes`` (integers in ``[0, 2**width)``) packed ``width`` bits each."""
    count = codes.numel()
    if width == 0 or count == 0:
        return torch.zeros(0, dtype=torch.uint8)
    if 8 % width == 0:  # whole codes per byte: shift the j-th code of every byte at once
        per = 8 // width
        padded = torch.zeros(math.ceil(count / per) * per, dtype=torch.uint8)
        padded[:count] = codes.reshape(-1)
        out = padded[0::per] << (8 - width)
        for j in range(1, per):
            out |= padded[j::per] << (8 - width * (j + 1))
        return out
    shifts = torch.arange(width - 1, -1, -1, dtype=torch.int64)
    return pack_bools((codes.reshape(-1, 1).to(torch.int64) >> shifts) & 1)


def unpack(data: torch.Tensor, width: int, count: int) -> torch.Tensor:
    """``count`` codes of ``width`` bits from ``data`` (int64)."""
    if width == 0 or count == 0:
        return torch.zeros(count, dtype=torch.int64)
    if 8 % width == 0:
        per = 8 // width
        codes = torch.empty(data.numel() * per, dtype=torch.uint8)
        for j in range(per):
            codes[j::per] = (data >> (8 - width * (j + 1))) & ((1 << width) - 1)
        return codes[:count].to(torch.int64)
    bits = unpack_bools(data, count * width).view(count, width).to(torch.int64)
    return (bits << torch.arange(width - 1, -1, -1, dtype=torch.int64)).sum(dim=1)


def padding_clear(data: torch.Tensor, used_bits: int) -> bool:
    """Whether the bits of ``data`` past the first ``used_bits`` are all zero."""
    if used_bits >= data.numel() * 8:
        return True
    return not bool(unpack_bools(data[used_bits // 8:])[used_bits % 8:].any())


__all__ = ["pack", "pack_bools", "packed_size", "padding_clear", "unpack", "unpack_bools"]
