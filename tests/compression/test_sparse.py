"""Top-k's index encodings chosen by density: exact round trips, sizes by formula and by hand,
and the payload checks (indices out of range, repeated, miscounted; padding; values)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.compression.bits import pack_bools
from fedloom.compression.payload import Encoded, Invalid, InvalidPayload
from fedloom.compression.sparse import (
    BITMAP,
    ELIAS_FANO,
    INT32,
    RandK,
    TopK,
    Values,
    decode_indices,
    encode_indices,
    index_bytes,
    index_coding,
    kept,
    validate_indices,
)


def _smallest(k: int, n: int) -> int:
    """Bytes of the smallest encoding, from the formulas: int32 4k, bitmap ceil(n/8),
    Elias-Fano ceil(kL/8) + ceil((k + floor((n-1)/2^L) + 1)/8) at its best L."""
    ef = min(math.ceil(k * low / 8) + math.ceil((k + (n - 1) // 2**low + 1) / 8)
             for low in range(32))
    return min(4 * k, math.ceil(n / 8), ef)


@st.composite
def index_sets(draw: st.DrawFn) -> tuple[torch.Tensor, int]:
    n = draw(st.integers(1, 5000))
    k = draw(st.integers(1, min(n, draw(st.sampled_from([3, 50, 5000])))))
    seed = draw(st.integers(0, 2**31))
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values
    return idx, n


@settings(max_examples=300, deadline=None)
@given(index_sets())
def test_indices_round_trip_exactly_in_the_smallest_encoding(case: tuple[torch.Tensor, int]
                                                               ) -> None:
    idx, n = case
    k = idx.numel()
    tensors = encode_indices(idx, n)
    enc = Encoded(tensors={**tensors, "values": torch.zeros(k)}, numel=n)
    assert torch.equal(decode_indices(enc, k), idx)
    assert torch.equal(validate_indices(enc, k), idx)
    assert enc.nbytes - 4 * k == index_bytes(k, n) == _smallest(k, n)


def test_the_encoding_follows_the_density() -> None:
    assert index_coding(1993, 199_210) == (ELIAS_FANO, 6)  # 1%: 2,134 bytes, not 7,972
    assert index_bytes(1993, 199_210) == 1495 + 639
    assert index_coding(50_000, 199_210)[0] == BITMAP  # 25%: 24,902 bytes
    assert index_coding(1, 2**28) == (INT32, 0)  # one index of 2^28: 4 bytes (EF 5)
    assert index_bytes(1, 2**28) == 4


def test_elias_fano_by_hand() -> None:
    """(5, 20, 21, 60) of 64: 4 low bits (5, 4, 5, 12) -> 0x54 0x5C; high parts (0, 1, 1, 3)
    plus (0, 1, 2, 3) -> ones at 0, 2, 3, 6 of 8 bits -> 0b10110010. 3 bytes; a bitmap is 8."""
    tensors = encode_indices(torch.tensor([5, 20, 21, 60]), 64)
    assert index_coding(4, 64) == (ELIAS_FANO, 4)
    assert tensors["ef_low"].tolist() == [0x54, 0x5C]
    assert tensors["ef_high"].tolist() == [0b10110010]


def test_int32_indices_for_one_of_many() -> None:
    n = 2**28  # never materialised: the indices' encoding and checks do not need the vector
    enc = Encoded(tensors={"indices": torch.tensor([n - 1], dtype=torch.int32),
                           "values": torch.ones(1)}, numel=n)
    assert validate_indices(enc, 1).tolist() == [n - 1]
    bad = Encoded(tensors={"indices": torch.tensor([n], dtype=torch.int32),
                           "values": torch.ones(1)}, numel=n)
    with pytest.raises(InvalidPayload) as e:
        validate_indices(bad, 1)
    assert e.value.reason is Invalid.INDEX_RANGE
    assert index_coding(2, 2**29)[0] == ELIAS_FANO  # two indices: no longer int32's


def _topk(n: int, ratio: float) -> tuple[TopK, Encoded]:
    codec = TopK(ratio=ratio)
    x = torch.arange(1, n + 1, dtype=torch.float32).flip(0)  # the first k are the largest
    return codec, codec.encode(x, None)


def _refused(codec: TopK | RandK, enc: Encoded, reason: Invalid, match: str | None = None
             ) -> None:
    with pytest.raises(InvalidPayload, match=match) as e:
        codec.validate(enc)
    assert e.value.reason is reason, e.value


def _with(enc: Encoded, **tensors: torch.Tensor) -> Encoded:
    return Encoded(tensors={**enc.tensors, **tensors}, numel=enc.numel)


def test_topk_bitmap_payload_checks() -> None:
    codec, enc = _topk(20, 0.5)  # 10 of 20: a 3-byte bitmap, 0xFF 0xC0 0x00
    assert codec.index_coding(20) == (BITMAP, 0)
    codec.validate(enc)
    assert enc.tensors["bitmap"].tolist() == [0xFF, 0xC0, 0x00]
    bitmap = torch.tensor([0xFF, 0xC0, 0x08], dtype=torch.uint8)  # bit 20 of 20: out of range
    _refused(codec, _with(enc, bitmap=bitmap), Invalid.INDEX_RANGE, "past position 19")
    bitmap = torch.tensor([0xFF, 0xE0, 0x00], dtype=torch.uint8)  # 11 set, 10 values
    _refused(codec, _with(enc, bitmap=bitmap), Invalid.SHAPE, "11 bits set, expected 10")


def test_topk_elias_fano_payload_checks() -> None:
    codec, enc = _topk(1000, 0.01)  # indices 0..9: EF with 6 low bits
    assert codec.index_coding(1000) == (ELIAS_FANO, 6)
    codec.validate(enc)
    low = enc.tensors["ef_low"].clone()
    low[1] = 0  # index 1 -> 0: the same index twice
    _refused(codec, _with(enc, ef_low=low), Invalid.INDEX_DUPLICATE, "repeated or out of order")
    high = torch.zeros_like(enc.tensors["ef_high"])
    high[-1] = 0b11000000  # bits 24 and 25 of 26: two ones, not ten
    _refused(codec, _with(enc, ef_high=high), Invalid.SHAPE, "2 bits set, expected 10")
    ones = torch.zeros(26, dtype=torch.bool)  # 10 + (999 >> 6) + 1 = 26 bits
    ones[[0, 1, 2, 3, 4, 5, 6, 7, 8, 25]] = True  # the last index's high part 25 - 9 = 16
    _refused(codec, _with(enc, ef_high=pack_bools(ones)), Invalid.INDEX_RANGE, "length 1000")
    padded = enc.tensors["ef_high"].clone()
    padded[-1] |= 1  # bit 31 of a 26-bit vector
    _refused(codec, _with(enc, ef_high=padded), Invalid.BAD_VALUE, "padding")


def test_topk_names_dtypes_sizes_and_values() -> None:
    codec, enc = _topk(1000, 0.01)
    _refused(codec, Encoded(tensors={"indices": torch.zeros(10, dtype=torch.int32),
                                     "values": torch.zeros(10)}, numel=1000), Invalid.NAMES)
    _refused(codec, _with(enc, values=torch.zeros(10, dtype=torch.float64)), Invalid.DTYPE)
    _refused(codec, _with(enc, values=torch.zeros(11)), Invalid.SHAPE)
    _refused(codec, _with(enc, values=torch.full((10,), float("nan"))), Invalid.NON_FINITE)
    _refused(codec, Encoded(tensors=enc.tensors, numel=-3), Invalid.BAD_VALUE, "length -3")


def test_randk_payload_checks() -> None:
    codec = RandK(ratio=0.1)
    enc = codec.encode(torch.randn(100), torch.Generator().manual_seed(0))
    codec.validate(enc)
    assert enc.tensors["values"].numel() == kept(0.1, 100) == 10
    _refused(codec, _with(enc, seed=torch.tensor(-1)), Invalid.BAD_VALUE, "seed -1")
    _refused(codec, _with(enc, seed=torch.tensor(1.0)), Invalid.DTYPE)
    _refused(codec, _with(enc, values=torch.zeros(9)), Invalid.SHAPE)
    _refused(codec, _with(enc, values=torch.full((10,), float("inf"))), Invalid.NON_FINITE)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-6e4, 6e4, allow_nan=False, width=32), min_size=1, max_size=300),
       st.floats(0.001, 1.0), st.integers(0, 9))
def test_float16_values_round_within_half_precision(values: list[float], ratio: float,
                                                    seed: int) -> None:
    x = torch.tensor(values)
    for codec in (TopK(ratio=ratio, values=Values.FLOAT16),
                  RandK(ratio=ratio, values=Values.FLOAT16)):
        enc = codec.encode(x, torch.Generator().manual_seed(seed))
        codec.validate(enc)
        out = codec.decode(enc)
        k = kept(ratio, x.numel())
        assert enc.tensors["values"].dtype == torch.float16
        assert enc.nbytes == codec.nbytes(x.numel())
        assert codec.nbytes(x.numel()) == type(codec)(ratio=ratio).nbytes(x.numel()) - 2 * k
        sent = out != 0
        assert bool(((out - x)[sent].abs() <= x[sent].abs() * 2**-11 + 2**-25).all())


def test_float16_values_are_checked_as_float16() -> None:
    codec = TopK(ratio=0.01, values=Values.FLOAT16)
    enc = codec.encode(torch.randn(1000), None)
    _refused(codec, _with(enc, values=enc.tensors["values"].float()), Invalid.DTYPE, "float16")
    _refused(codec, _with(enc, values=torch.full((10,), float("inf"), dtype=torch.float16)),
             Invalid.NON_FINITE)
    assert codec.nbytes(199_210) == 2 * 1993 + 2134  # 6,120 bytes, 32.6x fewer than float32


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=300),
       st.floats(0.001, 1.0))
def test_topk_is_a_contraction(values: list[float], ratio: float) -> None:
    """What error feedback needs (Stich et al. 2018): ||x - C(x)||^2 <= (1 - k/n) ||x||^2."""
    x = torch.tensor(values, dtype=torch.float64).float()
    codec = TopK(ratio=ratio)
    rest = float((codec.decode(codec.encode(x, None)) - x).double().pow(2).sum())
    k, n = kept(ratio, x.numel()), x.numel()
    assert rest <= (1 - k / n) * float(x.double().pow(2).sum()) * (1 + 1e-6) + 1e-30


def test_randk_is_a_contraction_in_expectation_not_unbiased() -> None:
    """Random-k without rescaling (as documented): E||x - C(x)||^2 = (1 - k/n) ||x||^2, and
    E C(x) = (k/n) x, not x (it claims no unbiasedness; error feedback makes up the rest)."""
    x = torch.randn(200, generator=torch.Generator().manual_seed(4))
    codec, gen, trials = RandK(ratio=0.1), torch.Generator().manual_seed(5), 2000
    outs = torch.stack([codec.decode(codec.encode(x, gen)) for _ in range(trials)])
    rest = (outs - x).pow(2).sum(dim=1).mean()
    assert float(rest) == pytest.approx(0.9 * float(x.pow(2).sum()), rel=0.02)
    stderr = x.abs() * math.sqrt(0.1 * 0.9 / trials)  # each value kept with probability 0.1
    assert bool(((outs.mean(dim=0) - 0.1 * x).abs() <= 5 * stderr).all())
    assert float((outs.mean(dim=0) - x).abs().max()) > float((5 * stderr).max())  # biased
