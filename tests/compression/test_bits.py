"""Bit packing: exact round trips at every width, sizes, padding, a case by hand."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.compression import bits


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 31), st.data())
def test_pack_unpack_round_trips_at_every_width(width: int, data: st.DataObject) -> None:
    codes = data.draw(st.lists(st.integers(0, (1 << width) - 1), max_size=100))
    packed = bits.pack(torch.tensor(codes, dtype=torch.int64), width)
    assert packed.dtype == torch.uint8 and packed.numel() == bits.packed_size(len(codes), width)
    assert bits.unpack(packed, width, len(codes)).tolist() == codes
    assert bits.padding_clear(packed, len(codes) * width)


def test_by_hand() -> None:
    """3 bits (odd width, bit by bit): 5, 2, 7 -> 101 010 111 -> 0b10101011, 0b10000000."""
    assert bits.pack(torch.tensor([5, 2, 7]), 3).tolist() == [0b10101011, 0b10000000]
    assert bits.pack(torch.tensor([1, 15, 0]), 4).tolist() == [0x1F, 0x00]
    assert bits.pack_bools(torch.tensor([True, False, True])).tolist() == [0b10100000]
    assert not bits.padding_clear(torch.tensor([0b10100001], dtype=torch.uint8), 3)
    assert bits.padding_clear(torch.tensor([0b10100001], dtype=torch.uint8), 8)
