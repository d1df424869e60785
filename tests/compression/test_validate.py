"""Every codec's payload checks: what its encoder makes passes (and has exactly the size
nbytes states), and each hostile change is refused with its named reason."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.compression import QSGD, BFloat16, Float16, RandK, Sign, TopK, sparse
from fedloom.compression.payload import (
    Codec,
    DecodesValidated,
    Encoded,
    Invalid,
    InvalidPayload,
    decode_validated,
)
from fedloom.compression.powersgd import PowerSGD
from fedloom.core.errors import ClientError

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)
CODECS: list[Codec] = [Float16(), BFloat16(), QSGD(levels=1, block=7), QSGD(levels=7, block=64),
                       QSGD(levels=127, block=5), QSGD(levels=300, block=64), TopK(ratio=0.02),
                       TopK(ratio=0.6), RandK(ratio=0.1), Sign(block=9)]


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(CODECS), st.lists(finite, min_size=1, max_size=300), st.integers(0, 9))
def test_every_encoding_validates_and_has_its_stated_size(codec: Codec, values: list[float],
                                                          seed: int) -> None:
    x = torch.tensor(values, dtype=torch.float32)
    enc = codec.encode(x, torch.Generator().manual_seed(seed))
    codec.validate(enc)
    assert enc.nbytes == codec.nbytes(x.numel())
    assert torch.equal(decode_validated(codec, enc), codec.decode(enc))  # one unpacking or two


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=3).map(tuple), st.integers(1, 3),
       st.integers(0, 9))
def test_powersgd_encodings_validate(shape: tuple[int, ...], rank: int, seed: int) -> None:
    codec = PowerSGD(shapes=(shape, (3,)), rank=rank)
    gen = torch.Generator().manual_seed(seed)
    enc = codec.encode(torch.randn(codec.size, generator=gen) * 1e3, gen)
    codec.validate(enc)
    assert enc.nbytes == codec.nbytes(codec.size)


def _refused(codec: Codec, enc: Encoded, reason: Invalid, match: str | None = None) -> None:
    """Refused by the check alone and by the check that decodes (unpacking once)."""
    for check in (codec.validate, lambda e: decode_validated(codec, e)):
        with pytest.raises(InvalidPayload, match=match) as e:
            check(enc)
        assert e.value.reason is reason, e.value
        assert isinstance(e.value, ClientError) and e.value.stage == "decode"


@pytest.mark.parametrize(("codec", "unpack"), [
    (TopK(ratio=0.02), "decode_indices"), (TopK(ratio=0.6), "decode_indices"),
    (QSGD(levels=7, block=16), "_levels"), (QSGD(levels=300, block=16), "_levels")])
def test_checking_and_decoding_unpack_the_payload_once(codec: TopK | QSGD, unpack: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    enc = codec.encode(torch.randn(300, generator=torch.Generator().manual_seed(1)),
                       torch.Generator().manual_seed(2))
    owner = sparse if isinstance(codec, TopK) else QSGD
    real, calls = getattr(owner, unpack), []

    def counted(*args: object) -> torch.Tensor:
        calls.append(1)
        return real(*args)  # type: ignore[no-any-return]

    monkeypatch.setattr(owner, unpack, counted)
    assert isinstance(codec, DecodesValidated)
    expected = codec.decode(enc)
    calls.clear()
    assert torch.equal(decode_validated(codec, enc), expected)
    assert len(calls) == 1


def test_top_k_picks_its_index_encoding_once_per_length() -> None:
    codec, x = TopK(ratio=0.05), torch.randn(997, generator=torch.Generator().manual_seed(0))
    sparse.index_coding.cache_clear()
    for _ in range(3):
        enc = codec.encode(x, None)
        codec.validate(enc)
        codec.decode(enc)
    info = sparse.index_coding.cache_info()
    assert (info.misses, info.currsize) == (1, 1) and info.hits >= 8


def _with(enc: Encoded, **tensors: torch.Tensor) -> Encoded:
    return Encoded(tensors={**enc.tensors, **tensors}, numel=enc.numel)


@pytest.mark.parametrize("codec", [Float16(), BFloat16()])
def test_half_precision_checks(codec: Float16 | BFloat16) -> None:
    enc = codec.encode(torch.randn(10), None)
    dtype = enc.tensors["values"].dtype
    _refused(codec, _with(enc, values=torch.zeros(9, dtype=dtype)), Invalid.SHAPE, "expected")
    _refused(codec, _with(enc, values=torch.zeros(2, 5, dtype=dtype)), Invalid.SHAPE)
    _refused(codec, _with(enc, values=torch.zeros(10)), Invalid.DTYPE, "float32")
    _refused(codec, _with(enc, values=torch.full((10,), float("nan"), dtype=dtype)),
             Invalid.NON_FINITE)
    _refused(codec, Encoded(tensors={"vals": enc.tensors["values"]}, numel=10), Invalid.NAMES)
    _refused(codec, Encoded(tensors=enc.tensors, numel=True), Invalid.BAD_VALUE)


def test_qsgd_checks_at_each_width() -> None:
    x = torch.randn(11, generator=torch.Generator().manual_seed(0))
    for levels, beyond in [(1, [0xC0] + [0] * 2), (7, [0xF0] + [0] * 5)]:  # code 3 > 2, 15 > 14
        codec = QSGD(levels=levels, block=4)
        enc = codec.encode(x, torch.Generator().manual_seed(0))
        codec.validate(enc)
        bad = torch.tensor(beyond, dtype=torch.uint8)
        _refused(codec, _with(enc, levels=bad), Invalid.LEVEL_RANGE, f"configured {levels}")
        padded = enc.tensors["levels"].clone()
        padded[-1] |= 1  # 11 codes leave the last byte's low bits unused
        _refused(codec, _with(enc, levels=padded), Invalid.BAD_VALUE, "padding")
    for levels, dtype in [(100, torch.int8), (300, torch.int16)]:
        codec = QSGD(levels=levels, block=4)
        enc = codec.encode(x, torch.Generator().manual_seed(0))
        levels_ = enc.tensors["levels"].clone()
        levels_[3] = -(levels + 1)
        _refused(codec, _with(enc, levels=levels_), Invalid.LEVEL_RANGE, f"{levels + 1}")
        _refused(codec, _with(enc, levels=levels_.to(torch.int32)), Invalid.DTYPE)
        assert enc.tensors["levels"].dtype == dtype
    codec = QSGD(levels=127, block=4)
    enc = codec.encode(x, torch.Generator().manual_seed(0))
    _refused(codec, _with(enc, norms=torch.tensor([1.0, float("inf"), 1.0])), Invalid.NON_FINITE)
    _refused(codec, _with(enc, norms=torch.tensor([1.0, -1.0, 1.0])), Invalid.BAD_VALUE)
    _refused(codec, _with(enc, norms=torch.ones(2)), Invalid.SHAPE, r"expected \(3,\)")


def test_sign_checks() -> None:
    codec = Sign(block=4)
    enc = codec.encode(torch.randn(10), None)
    codec.validate(enc)
    _refused(codec, _with(enc, scale=torch.tensor([1.0, float("nan"), 1.0])), Invalid.NON_FINITE)
    _refused(codec, _with(enc, scale=torch.tensor([1.0, -2.0, 1.0])), Invalid.BAD_VALUE)
    signs = enc.tensors["signs"].clone()
    signs[-1] |= 0b00100000  # the 11th bit of 10
    _refused(codec, _with(enc, signs=signs), Invalid.BAD_VALUE, "padding")
    _refused(codec, _with(enc, signs=torch.zeros(3, dtype=torch.uint8)), Invalid.SHAPE)


def test_powersgd_checks() -> None:
    codec = PowerSGD(shapes=((6, 8), (6,)), rank=2)
    gen = torch.Generator().manual_seed(0)
    enc = codec.encode(torch.randn(codec.size, generator=gen), gen)
    _refused(codec, Encoded(tensors=enc.tensors, numel=55), Invalid.SHAPE, "the model has 54")
    _refused(codec, _with(enc, p=enc.tensors["p"] * 2), Invalid.BAD_VALUE, "not 1")
    _refused(codec, _with(enc, q=torch.full((16,), 3e38)), Invalid.NON_FINITE, "overflows")
    _refused(codec, _with(enc, raw=torch.full((6,), float("nan"))), Invalid.NON_FINITE)
    _refused(codec, _with(enc, q=torch.zeros(15)), Invalid.SHAPE)
    _refused(codec, Encoded(tensors={"p": enc.tensors["p"], "q": enc.tensors["q"]}, numel=54),
             Invalid.NAMES)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_half_precision_finite_check_agrees_with_isfinite_on_every_bit_pattern(
        dtype: torch.dtype) -> None:
    from fedloom.compression.payload import _non_finite
    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    assert torch.equal(_non_finite(every), ~torch.isfinite(every))
    assert int(_non_finite(every).sum()) == (2 * 1024 if dtype == torch.float16 else 2 * 128)
