"""PowerSGD: exact on low-rank matrices, a projection otherwise (never larger than the
matrix), vectors sent as they are, sizes by hand, the warm start converging to the best
rank-r approximation, error feedback, config."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.compression import CompressionConfig, Uplink, make_codec
from fedloom.compression.codecs import compress_update
from fedloom.compression.powersgd import PowerSGD
from fedloom.core.errors import ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.models import ModelConfig, model_factory


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_a_matrix_of_rank_r_round_trips() -> None:
    gen = _gen(1)
    m = torch.randn(30, 2, generator=gen) @ torch.randn(2, 40, generator=gen)
    codec = PowerSGD(shapes=((30, 40), (5,)), rank=2)
    x = torch.cat([m.view(-1), torch.randn(5, generator=gen)])
    out = codec.decode(codec.encode(x, gen))
    torch.testing.assert_close(out, x, rtol=1e-4, atol=1e-4)
    assert torch.equal(out[-5:], x[-5:])  # the vector travels as it is


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 20), st.integers(2, 20), st.integers(1, 3), st.integers(0, 99))
def test_decoding_is_a_projection_of_the_matrix(rows: int, cols: int, rank: int,
                                                seed: int) -> None:
    """D = P P^T M with orthonormal P: M - D is orthogonal to P and no larger than M."""
    gen = _gen(seed)
    codec = PowerSGD(shapes=((rows, cols),), rank=rank)
    x = torch.randn(rows * cols, generator=gen)
    enc = codec.encode(x, gen)
    out = codec.decode(enc)
    assert enc.nbytes == codec.nbytes(rows * cols)
    if rank * (rows + cols) >= rows * cols:  # factors no smaller: sent as it is
        assert torch.equal(out, x) and enc.tensors["p"].numel() == 0
        return
    p = enc.tensors["p"].view(rows, rank)
    m, d = x.view(rows, cols), out.view(rows, cols)
    torch.testing.assert_close(p.T @ p, torch.eye(rank), atol=1e-5, rtol=0)
    torch.testing.assert_close(p.T @ (m - d), torch.zeros(rank, cols), atol=1e-4, rtol=0)
    assert float((m - d).norm()) <= float(m.norm()) * (1 + 1e-5)


def test_sizes_by_hand_for_the_2nn() -> None:
    """784-200-200-10: P and Q of rank 2 per weight, biases as they are:
    2 (200 + 784) + 2 (200 + 200) + 2 (10 + 200) + 200 + 200 + 10 = 3,598 floats."""
    model = model_factory(ModelConfig(name="mlp"), (1, 28, 28), 10)()
    layout = ParamLayout.from_module(model)
    codec = PowerSGD.for_layout(layout, rank=2)
    assert layout.size == 199_210 and codec.nbytes(layout.size) == 4 * 3_598
    with pytest.raises(ValueError, match="given 10 values"):
        codec.nbytes(10)


def test_the_warm_start_converges_to_the_best_rank_r_approximation() -> None:
    """Repeated on one matrix, the warm-started iteration is subspace iteration: its error
    falls to the SVD's ||M - M_r||_F; from a fresh start each time it stays above it."""
    gen = _gen(2)
    u, _ = torch.linalg.qr(torch.randn(40, 40, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(30, 30, generator=gen))
    s = torch.tensor([10.0, 6.0] + [1.0 / (i + 1) for i in range(28)])
    m = u[:, :30] @ torch.diag(s) @ v.T
    best = float(s[2:].norm())
    codec = PowerSGD(shapes=((40, 30),), rank=2)
    warm = None
    for _ in range(12):  # the error shrinks by s_3 / s_2 = 1/6 an iteration
        enc, warm = codec.encode_warm(m.view(-1), warm, gen)
    warm_error = float((codec.decode(enc) - m.view(-1)).norm())
    cold_error = float((codec.decode(codec.encode(m.view(-1), gen)) - m.view(-1)).norm())
    assert warm_error == pytest.approx(best, rel=1e-3)
    assert cold_error > best * 1.05


def test_error_feedback_carries_what_was_not_sent() -> None:
    gen = _gen(3)
    codec = PowerSGD(shapes=((20, 30), (4,)), rank=1)
    residual = warm = None
    sent = torch.zeros(codec.size)
    truth = torch.zeros(codec.size)
    for _ in range(20):
        update = torch.randn(codec.size, generator=gen)
        step = compress_update(codec, update, residual=residual, warm=warm, gen=gen,
                               feedback=True)
        residual, warm = step.residual, step.warm
        sent += step.decoded
        truth += update
    assert residual is not None and warm is not None and warm.numel() == 30
    torch.testing.assert_close(sent + residual, truth, rtol=1e-4, atol=1e-4)


def test_config() -> None:
    layout = ParamLayout.from_module(torch.nn.Linear(30, 20))
    cfg = CompressionConfig(uplink=Uplink.POWERSGD, rank=3)
    codec = make_codec(cfg, layout)
    assert isinstance(codec, PowerSGD) and codec.rank == 3 and cfg.feedback
    assert codec.nbytes(layout.size) == 4 * (3 * (20 + 30) + 20)
    with pytest.raises(ConfigError, match="needs the model's layout"):
        make_codec(cfg)
    with pytest.raises(ConfigError, match="rank = 0"):
        CompressionConfig(uplink=Uplink.POWERSGD, rank=0)
    with pytest.raises(ValueError, match="warm start of 5 values"):
        codec.encode_warm(torch.zeros(layout.size), torch.zeros(5), None)


def test_a_run_sends_factors_and_keeps_each_clients_warm_start() -> None:
    from fedloom.app.build import build_run
    from fedloom.app.config import load_config
    from fedloom.compression.uplink import RESIDUAL, WARM
    from fedloom.runtime.loop import ServerLoop

    loop = build_run(load_config(None, [
        "data.name=synthetic", "data.num_clients=12", "model.name=logreg", "cohort.size=4",
        "client.lr=0.01", "client.batch_size=10", "rounds=4", "fleet.threads=1",
        "eval.train=true", "compression.uplink=powersgd", "compression.rank=1"]))
    assert isinstance(loop, ServerLoop)
    rows = loop.run().rows
    codec = PowerSGD.for_layout(loop.layout, rank=1)
    assert codec.nbytes(loop.layout.size) < loop.layout.size  # factors: under a byte a value
    assert all(r["bytes_up"] == 4 * codec.nbytes(loop.layout.size) for r in rows)
    losses = [float(r["global_train_loss"]) for r in rows]  # type: ignore[arg-type]
    assert losses[-1] < losses[0], losses
    assert loop.store is not None
    keys = {key for (key, _), _ in loop.store.items()}
    assert {RESIDUAL, WARM} <= keys
