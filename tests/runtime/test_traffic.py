"""Every round's row carries the bytes it moved: in simulation the payload the protocol would
send, in a deployment the payload measured on the streams (and the framing around it)."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
import torch

from fedloom.app.build import build_run
from fedloom.app.config import load_config
from fedloom.app.server import ServerOptions, build_deployment
from fedloom.compression import make_codec
from tests.loopback import SYNTH, serve_to_the_end


@pytest.mark.integration
@pytest.mark.parametrize("algorithm", ["fedavg", "scaffold"])
def test_simulated_bytes_equal_the_payload_a_deployment_sends(tmp_path: Path,
                                                              algorithm: str) -> None:
    overrides = [*SYNTH, f"algorithm.name={algorithm}"]
    sim = build_run(load_config(None, overrides)).run().rows
    cfg = load_config(None, [*overrides, f"out={tmp_path / 'run'}"])
    dep = build_deployment(cfg, ServerOptions(address="127.0.0.1:0", insecure=True,
                                              console=False))
    deployed = serve_to_the_end(dep).rows
    assert len(sim) == len(deployed) == 3
    size = dep.fleet.server.layout.size * 4  # one float32 model
    per_client = size * (2 if algorithm == "scaffold" else 1)  # SCAFFOLD: + control variate
    for s, d in zip(sim, deployed, strict=True):
        assert s["bytes_down"] == d["bytes_down"] == 3 * per_client
        assert s["bytes_up"] == d["bytes_up"] == 3 * per_client
        assert "framing_bytes_down" not in s  # a simulation has no frames to measure
        assert d["framing_bytes_down"] > 0 and d["framing_bytes_up"] > 0  # type: ignore[operator]


@pytest.mark.integration
@pytest.mark.parametrize(("uplink", "downlink", "algorithm", "extra"), [
    ("fp16", "none", "fedavg", ()), ("bf16", "none", "fedavg", ()),
    ("qsgd", "none", "fedavg", ()), ("qsgd", "none", "fedavg", ("compression.levels=7",)),
    ("topk", "none", "fedavg", ()), ("topk", "none", "fedavg", ("compression.values=float16",)),
    ("randk", "none", "fedavg", ()), ("sign", "none", "fedavg", ()),
    ("powersgd", "none", "fedavg", ()), ("none", "fp16", "fedavg", ()),
    ("topk", "delta", "fedavg", ()), ("qsgd", "none", "scaffold", ())])
def test_a_compressed_deployment_sends_the_bytes_the_simulation_counts(
        tmp_path: Path, uplink: str, downlink: str, algorithm: str,
        extra: tuple[str, ...]) -> None:
    """Replies carry the codec's tensors (no params), tasks the encoded model: the bytes are
    the simulation's in both directions, and the deployment ends with the simulation's model
    (top-k's residuals, delta's last model, SCAFFOLD's control-variate mirror kept by the
    deployed clients themselves)."""
    overrides = [*SYNTH, "rounds=4", f"algorithm.name={algorithm}", f"compression.uplink={uplink}",
                 f"compression.downlink={downlink}", "compression.ratio=0.2",
                 "compression.block=16", *extra]
    sim_loop = build_run(load_config(None, overrides))
    sim = sim_loop.run().rows
    cfg = load_config(None, [*overrides, f"out={tmp_path / 'run'}"])
    dep = build_deployment(cfg, ServerOptions(address="127.0.0.1:0", insecure=True,
                                              console=False))
    history = serve_to_the_end(dep)
    numel = dep.fleet.server.layout.size
    layout = dep.fleet.server.layout
    up = make_codec(cfg.compression, layout).nbytes(numel) if uplink != "none" else 4 * numel
    if algorithm == "scaffold":  # the control variate's change too, and the round it is from
        up += make_codec(cfg.compression, layout).nbytes(numel) + 8
    down = {"none": 4 * numel, "fp16": 2 * numel}.get(downlink)
    for s, d in zip(sim, history.rows, strict=True):
        assert s["bytes_up"] == d["bytes_up"] == 3 * up
        assert s["bytes_down"] == d["bytes_down"]  # residuals stay local
        assert down is None or algorithm != "fedavg" or d["bytes_down"] == 3 * down
        assert d["framing_bytes_up"] > 0  # type: ignore[operator]
    if downlink == "delta":  # whole models first, then changes of about a quarter the size
        assert sim[0]["bytes_down"] == 3 * (4 * numel + 8)
        assert min(r["bytes_down"] for r in sim) < 3 * 2 * numel  # type: ignore[type-var]
    torch.testing.assert_close(history.final.params, sim_loop.state.params, rtol=0, atol=0)


def test_asynchronous_rows_count_what_was_handed_out_and_consumed(tmp_path: Path) -> None:
    """Simulated: each row's bytes_up is the results it mixed in; deployed (measured on the
    streams, where a reply may arrive before the row that consumes it): whole models, and at
    least as many as were mixed in."""
    overrides = [*SYNTH, "rounds=4", "algorithm.name=fedasync", "clock.concurrency=3"]
    loop = build_run(load_config(None, overrides))
    rows = loop.run().rows
    size = loop.layout.size * 4
    consumed = [0, *(int(r["client_updates"]) for r in rows)]  # type: ignore[call-overload]
    assert [r["bytes_up"] for r in rows] == [size * (b - a) for a, b in pairwise(consumed)]
    assert sum(r["bytes_down"] for r in rows) >= sum(r["bytes_up"] for r in rows)  # type: ignore[misc]
    dep = build_deployment(load_config(None, [*overrides, f"out={tmp_path / 'run'}"]),
                           ServerOptions(address="127.0.0.1:0", insecure=True, console=False))
    deployed = serve_to_the_end(dep).rows
    assert all(r["bytes_up"] % size == 0 for r in deployed)  # type: ignore[operator]
    assert sum(r["bytes_up"] for r in deployed) >= size * len(deployed)  # type: ignore[misc]
    assert sum(r["framing_bytes_up"] for r in deployed) > 0  # type: ignore[misc]
