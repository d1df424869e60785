"""Reading TensorBoard event files back in tests (with TensorBoard's own reader)."""

from __future__ import annotations

from pathlib import Path

from fedloom.runtime.sinks import Row


def read_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar in ``log_dir``'s event files: tag -> step -> value, read by the accumulator
    TensorBoard's own UI uses (which also drops the steps a resumed run purged)."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.compat.proto import types_pb2
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        events = acc.Tensors(tag)
        steps = [e.step for e in events]
        assert len(steps) == len(set(steps)), f"{tag}: a step written twice: {steps}"
        assert {e.tensor_proto.dtype for e in events} == {types_pb2.DT_DOUBLE}, tag
        out[tag] = {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in events}
    return out


def expected_scalars(rows: list[Row]) -> dict[str, dict[int, float]]:
    """What the sink should write for ``rows``: numbers at step ``round`` (a lower aggregator's
    at its ``node_round``, under ``NODE/``), by key."""
    out: dict[str, dict[int, float]] = {}
    for row in rows:
        below = bool(row.get("level"))
        prefix = f"{row['node']}/" if below else ""
        step = row["node_round"] if below and "node_round" in row else row["round"]
        for key, value in row.items():
            if key in ("round", "level", "node_round") or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                out.setdefault(prefix + key, {})[int(step)] = float(value)  # type: ignore[arg-type]
    return out
