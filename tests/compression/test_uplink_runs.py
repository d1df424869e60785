"""Uplink codecs through the one build path: every codec runs and learns, rows count the
codec's bytes, residuals live in the client-state store, refusals name what is refused."""

from __future__ import annotations

import pickle

import pytest
import torch

from fedloom.app.build import build_run
from fedloom.app.config import load_config
from fedloom.compression import CompressionConfig, Uplink, make_codec
from fedloom.compression.uplink import RESIDUAL, Compressed
from fedloom.core.errors import ConfigError
from fedloom.runtime.loop import ServerLoop

TINY = ["data.name=synthetic", "data.num_clients=12", "model.name=logreg", "cohort.size=4",
        "client.lr=0.01", "client.batch_size=10", "rounds=4", "fleet.threads=1",
        "eval.train=true"]


def _loop(*overrides: str) -> ServerLoop:
    loop = build_run(load_config(None, [*TINY, *overrides]))
    assert isinstance(loop, ServerLoop)
    return loop


@pytest.mark.parametrize("codec", ["fp16", "bf16", "qsgd", "topk", "randk", "sign"])
def test_each_codec_runs_learns_and_counts_its_bytes(codec: str) -> None:
    loop = _loop(f"compression.uplink={codec}", "compression.ratio=0.3", "compression.levels=15",
                 "compression.block=10")
    rows = loop.run().rows
    numel = loop.layout.size
    sent = make_codec(CompressionConfig(uplink=Uplink(codec), ratio=0.3, levels=15,
                                        block=10)).nbytes(numel)
    assert all(r["bytes_up"] == 4 * sent for r in rows)
    assert all(r["bytes_down"] == 4 * 4 * numel for r in rows)  # residuals are not traffic
    assert sent < 4 * numel
    losses = [r["global_train_loss"] for r in rows]
    assert losses[-1] < losses[0], losses  # type: ignore[operator]


def test_uncompressed_rows_count_float32_and_fp16_stays_close_to_it() -> None:
    plain = _loop()
    rows = plain.run().rows
    assert all(r["bytes_up"] == r["bytes_down"] == 4 * 4 * plain.layout.size for r in rows)
    half = _loop("compression.uplink=fp16").run()
    torch.testing.assert_close(half.final.params, plain.state.params, atol=1e-3, rtol=0)
    assert not torch.equal(half.final.params, plain.state.params)  # it did compress


def test_error_feedback_keeps_each_clients_residual_in_the_store() -> None:
    loop = _loop("compression.uplink=topk", "compression.ratio=0.1")
    assert isinstance(loop.algorithm, Compressed) and loop.algorithm.feedback
    loop.run()
    assert loop.store is not None
    residuals = {cid: v for (key, cid), v in loop.store.items() if key == RESIDUAL}
    assert residuals and all(float(v.abs().sum()) > 0 for v in residuals.values())
    off = _loop("compression.uplink=topk", "compression.ratio=0.1",
                "compression.error_feedback=false")
    off.run()
    assert off.store is not None and not any(k == RESIDUAL for (k, _), _ in off.store.items())


def test_the_client_step_pickles_for_worker_processes() -> None:
    loop = _loop("compression.uplink=qsgd")
    assert pickle.loads(pickle.dumps(loop.algorithm.local)) == loop.algorithm.local


def test_refusals_name_what_is_refused() -> None:
    with pytest.raises(ConfigError, match="algorithm ditto does not send a model update"):
        load_config(None, [*TINY, "compression.uplink=topk", "algorithm.name=ditto"])
    with pytest.raises(ConfigError, match="a sparsifier's indices would travel unmasked"):
        load_config(None, [*TINY, "compression.uplink=topk", "secagg.enabled=true"])
    with pytest.raises(ConfigError, match=r"compression\.uplink = 'nope'"):
        load_config(None, [*TINY, "compression.uplink=nope"])
