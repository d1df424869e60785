"""Uplink codecs: round-trips within their stated bounds, sizes by hand, QSGD's unbiasedness,
error feedback carrying what was not sent."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.compression import (
    QSGD,
    BFloat16,
    CompressionConfig,
    Float16,
    RandK,
    Sign,
    TopK,
    Uplink,
)
from fedloom.compression.codecs import kept, with_feedback
from fedloom.compression.config import make_codec
from fedloom.compression.sparse import decode_indices
from fedloom.core.errors import ConfigError

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)
vectors = st.lists(finite, min_size=1, max_size=300).map(
    lambda v: torch.tensor(v, dtype=torch.float32))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@settings(max_examples=200, deadline=None)
@given(vectors)
def test_fp16_round_trip_within_half_precision(x: torch.Tensor) -> None:
    codec = Float16()
    out = codec.decode(codec.encode(x, None))
    clamped = x.clamp(-65504, 65504)
    assert bool(((out - clamped).abs() <= clamped.abs() * 2**-11 + 2**-25).all())
    assert bool(torch.isfinite(out).all())


@settings(max_examples=200, deadline=None)
@given(vectors)
def test_bf16_round_trip_within_relative_bound(x: torch.Tensor) -> None:
    codec = BFloat16()
    out = codec.decode(codec.encode(x, None))
    assert bool(((out - x).abs() <= x.abs() * 2**-8 + 2**-133).all())


@settings(max_examples=200, deadline=None)
@given(vectors, st.integers(1, 300), st.sampled_from([1, 4, 127, 1000]), st.integers(0, 99))
def test_qsgd_round_trip_within_one_level(x: torch.Tensor, block: int, levels: int,
                                          seed: int) -> None:
    codec = QSGD(levels=levels, block=block)
    enc = codec.encode(x, _gen(seed))
    out = codec.decode(enc)
    pad = torch.nn.functional.pad(x, (0, (-x.numel()) % block)).view(-1, block)
    norms = pad.double().norm(dim=1, keepdim=True).float()  # float64: tiny values' squares
    bound = (norms / levels).expand_as(pad).reshape(-1)[: x.numel()]
    assert bool(((out - x).abs() <= bound * (1 + 1e-5) + 1e-30).all())
    assert enc.nbytes == codec.nbytes(x.numel())


@settings(max_examples=200, deadline=None)
@given(vectors, st.floats(0.001, 1.0))
def test_topk_keeps_exactly_the_k_largest_magnitudes(x: torch.Tensor, ratio: float) -> None:
    codec = TopK(ratio=ratio)
    enc = codec.encode(x, None)
    out = codec.decode(enc)
    k = kept(ratio, x.numel())
    idx = decode_indices(enc, k)
    assert idx.numel() == k and idx.unique().numel() == k
    assert torch.equal(out[idx], x[idx])  # kept values exact
    rest = torch.ones(x.numel(), dtype=torch.bool)
    rest[idx] = False
    assert bool((out[rest] == 0).all())
    if bool(rest.any()):  # nothing dropped is larger than anything kept
        assert float(x[rest].abs().max()) <= float(x[idx].abs().min())
    assert enc.nbytes == codec.nbytes(x.numel()) <= 8 * k
    codec.validate(enc)


@settings(max_examples=100, deadline=None)
@given(vectors, st.floats(0.001, 1.0), st.integers(0, 99))
def test_randk_keeps_k_exact_values(x: torch.Tensor, ratio: float, seed: int) -> None:
    codec = RandK(ratio=ratio)
    enc = codec.encode(x, _gen(seed))
    out = codec.decode(enc)
    k = kept(ratio, x.numel())
    changed = out != x
    assert int((~changed).sum()) >= k  # k kept exactly (others are 0, equal only if x was 0)
    assert bool((out[changed] == 0).all())
    assert enc.nbytes == codec.nbytes(x.numel()) == 4 * k + 8


@settings(max_examples=100, deadline=None)
@given(vectors, st.integers(1, 64))
def test_sign_keeps_each_sign_and_the_blocks_mean_magnitude(x: torch.Tensor, block: int) -> None:
    codec = Sign(block=block)
    enc = codec.encode(x, None)
    y = codec.decode(enc)
    assert enc.nbytes == codec.nbytes(x.numel())
    # the sign of every value (0 as +), kept as -0.0 where the scale underflows to 0
    assert bool((torch.signbit(y) == (x < 0)).all())
    for b in range(0, x.numel(), block):
        part = x[b:b + block]
        torch.testing.assert_close(y[b:b + block].abs(),
                                   part.abs().mean().expand(part.numel()))


def test_sign_by_hand() -> None:
    """x = (1, -3, 0, 4) in blocks of 2: scales 2 and 2; bits 0100 -> one byte 0b01000000."""
    enc = Sign(block=2).encode(torch.tensor([1.0, -3.0, 0.0, 4.0]), None)
    assert enc.tensors["signs"].tolist() == [64] and enc.tensors["scale"].tolist() == [2.0, 2.0]
    assert Sign(block=2).decode(enc).tolist() == [2.0, -2.0, 2.0, 2.0]
    assert Sign(block=4096).nbytes(199_210) == 24_902 + 4 * 49  # 32x smaller, 49 scales


def test_sizes_by_hand() -> None:
    assert Float16().nbytes(1000) == BFloat16().nbytes(1000) == 2000
    assert QSGD(levels=127, block=256).nbytes(1000) == 1000 + 4 * 4  # int8 + 4 norms
    assert QSGD(levels=128, block=1000).nbytes(1000) == 2000 + 4  # int16 + 1 norm
    # 10 of 1000: Elias-Fano with 6 low bits: 60 bits -> 8 bytes, 10 + (999 >> 6) + 1 = 26
    # high bits -> 4 bytes; int32 would take 40, a bitmap 125
    assert TopK(ratio=0.01).nbytes(1000) == 10 * 4 + 8 + 4
    assert TopK(ratio=0.001).nbytes(10) == 4 + 2  # one value; a bitmap of 10 bits
    assert TopK(ratio=0.5).nbytes(1000) == 500 * 4 + 125  # dense: a bitmap
    assert QSGD(levels=7, block=1000).nbytes(1001) == 501 + 4 * 2  # 4 bits a value
    assert QSGD(levels=1, block=1000).nbytes(1001) == 251 + 4 * 2  # 2 bits a value
    assert RandK(ratio=0.1).nbytes(1000) == 100 * 4 + 8


def test_qsgd_by_hand() -> None:
    """x = (3, -4): norm 5, levels 5 -> |x| * 5 / 5 = (3, 4) exactly, no randomness; 5 levels
    travel in 4 bits as level + 5: (8, 1) -> one byte 0x81. 10 levels: int8 (6, -8)."""
    codec = QSGD(levels=5, block=2)
    enc = codec.encode(torch.tensor([3.0, -4.0]), _gen())
    assert enc.tensors["levels"].tolist() == [0x81]
    assert enc.tensors["norms"].tolist() == [5.0]
    assert codec.decode(enc).tolist() == [3.0, -4.0]
    wide = QSGD(levels=10, block=2).encode(torch.tensor([3.0, -4.0]), _gen())
    assert wide.tensors["levels"].tolist() == [6, -8] and wide.tensors["levels"].dtype == torch.int8
    one = QSGD(levels=1, block=4).encode(torch.tensor([0.0, -5.0, 0.0, 0.0]), _gen())
    assert one.tensors["levels"].tolist() == [0b01_00_01_01]  # level + 1 in 2 bits: 1, 0, 1, 1


@pytest.mark.parametrize(("levels", "bits"), [(1, 2), (7, 4), (127, 8), (1000, 16)])
def test_qsgd_is_unbiased_at_every_width(levels: int, bits: int) -> None:
    """The mean of many independent encodings approaches x: every coordinate within 5
    standard errors (the variance of one coordinate is at most (norm / levels)^2 / 4)."""
    x = torch.randn(200, generator=_gen(1))
    codec = QSGD(levels=levels, block=50)
    assert codec.bits == bits
    gen = _gen(2)
    trials = 3000
    mean = sum(codec.decode(codec.encode(x, gen)) for _ in range(trials)) / trials
    blocks = x.view(-1, 50).norm(dim=1, keepdim=True).expand(-1, 50).reshape(-1)
    stderr = blocks / levels / 2 / math.sqrt(trials)
    assert bool(((mean - x).abs() <= 5 * stderr).all())
    one = codec.decode(codec.encode(x, gen))  # one draw is far from x: the test can fail
    assert float((one - x).abs().max()) > float((5 * stderr).max())


@pytest.mark.parametrize("codec", [TopK(ratio=0.05), RandK(ratio=0.05), Sign(block=50)])
def test_error_feedback_tracks_the_sum_of_updates(codec: TopK | RandK | Sign) -> None:
    """With feedback, sum(decoded) = sum(true) - residual, and the residual stays bounded;
    without it the gap grows with the rounds."""
    gen = _gen(3)
    updates = [torch.randn(400, generator=gen) + 0.5 for _ in range(60)]
    residual: torch.Tensor | None = None
    sent = torch.zeros(400)
    plain = torch.zeros(400)
    for u in updates:
        decoded, residual = with_feedback(codec, u, residual, gen)
        sent += decoded
        plain += codec.decode(codec.encode(u, gen))
    truth = torch.stack(updates).sum(0)
    assert residual is not None
    torch.testing.assert_close(sent + residual, truth, rtol=1e-4, atol=1e-3)
    assert float((sent - truth).norm()) < 0.5 * float((plain - truth).norm())


def test_config_names_codecs_and_checks_options() -> None:
    assert isinstance(make_codec(CompressionConfig(uplink=Uplink.QSGD)), QSGD)
    assert CompressionConfig(uplink=Uplink.TOPK).feedback
    assert CompressionConfig(uplink=Uplink.SIGN).feedback
    assert isinstance(make_codec(CompressionConfig(uplink=Uplink.SIGN, block=64)), Sign)
    assert not CompressionConfig(uplink=Uplink.QSGD).feedback
    assert CompressionConfig(uplink=Uplink.QSGD, error_feedback=True).feedback
    with pytest.raises(ConfigError, match=r"ratio = 0\.0"):
        CompressionConfig(ratio=0.0)
    with pytest.raises(ConfigError, match="levels = 0"):
        CompressionConfig(levels=0)


def test_config_values_reach_the_sparsifiers_and_nothing_else() -> None:
    from fedloom.compression.sparse import Values
    codec = make_codec(CompressionConfig(uplink=Uplink.TOPK, values=Values.FLOAT16))
    assert isinstance(codec, TopK) and codec.values is Values.FLOAT16
    codec = make_codec(CompressionConfig(uplink=Uplink.RANDK, values=Values.FLOAT16))
    assert isinstance(codec, RandK) and codec.values is Values.FLOAT16
    with pytest.raises(ConfigError, match="applies to the topk and randk uplinks only"):
        CompressionConfig(uplink=Uplink.QSGD, values=Values.FLOAT16)
