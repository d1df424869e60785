"""fedloom's packages as protocol messages, in conversion pairs (``x_to_proto`` / ``x_from_proto``).

A downlink travels as a ``FIT`` header (round, client id, training config) with the tensor
``params`` and one tensor ``extras/<key>`` per extra; a :class:`ClientResult` as a ``FIT_REPLY``
with the same tensor names plus its counts and metrics. A result whose update is encoded by an
uplink codec (extras ``codec/<name>``, :mod:`fedloom.compression.uplink`) travels without
``params``: the codec's tensors are the update. Likewise a downlink whose model is encoded
(extras ``downlink/codec/...``, :mod:`fedloom.compression.downlink`) travels without
``params``. The ``*_from_*`` functions check what
arrived against the model's layout and raise :class:`MessageRejected` with a named reason.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

import torch

from fedloom.compression.downlink import CODED, DOWN
from fedloom.compression.uplink import CODEC_EXTRAS, ENCODED
from fedloom.core.errors import ConfigError
from fedloom.core.layout import LayoutEntry, ParamLayout
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientConfig, ClientResult, Downlink
from fedloom.transport.codec import (
    DTYPE_NAMES,
    DTYPES,
    MAX_DIMS,
    MAX_NAME,
    MAX_TENSORS,
    MessageRejected,
    Package,
    Rejection,
    reject_if,
)
from fedloom.transport.generated import fedloom_pb2 as pb
from fedloom.transport.handlers import Message, Value, check_msg_type

Scalar = float | int | str | bool
PARAMS = "params"
EXTRAS = "extras/"
MAX_LAYOUT_ENTRIES = 100_000


def layout_to_proto(layout: ParamLayout) -> pb.Layout:
    return pb.Layout(dtype=DTYPE_NAMES[layout.dtype], entries=[
        pb.LayoutEntry(name=e.name, shape=list(e.shape), dtype=DTYPE_NAMES[e.dtype],
                       offset=e.offset, trainable=e.trainable) for e in layout.entries])


def layout_from_proto(msg: pb.Layout) -> ParamLayout:
    """The layout a server announced; entries must tile the flat vector in order."""
    reject_if(msg.dtype not in DTYPES or len(msg.entries) > MAX_LAYOUT_ENTRIES,
              Rejection.BAD_SPEC, f"layout of dtype {msg.dtype[:40]!r} with "
              f"{len(msg.entries)} entries")
    entries: list[LayoutEntry] = []
    offset = 0
    for e in msg.entries:
        reject_if(e.dtype not in DTYPES or not 0 < len(e.name) <= MAX_NAME
                  or len(e.shape) > MAX_DIMS or any(d < 0 for d in e.shape)
                  or e.offset != offset, Rejection.BAD_SPEC,
                  f"layout entry {e.name[:MAX_NAME]!r}: dtype {e.dtype[:40]!r}, shape "
                  f"{list(e.shape)[:10]}, offset {e.offset} (expected {offset})")
        entry = LayoutEntry(name=e.name, shape=tuple(e.shape), dtype=DTYPES[e.dtype],
                            offset=e.offset, trainable=e.trainable)
        entries.append(entry)
        offset = entry.stop
    return ParamLayout(entries=tuple(entries), dtype=DTYPES[msg.dtype])


def config_to_proto(cfg: ClientConfig) -> pb.TrainConfig:
    msg = pb.TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                         momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.steps is not None:
        msg.steps = cfg.steps
    return msg


def config_from_proto(msg: pb.TrainConfig) -> ClientConfig:
    try:
        return ClientConfig(epochs=msg.epochs, steps=msg.steps if msg.HasField("steps") else None,
                            batch_size=msg.batch_size, lr=msg.lr, momentum=msg.momentum,
                            weight_decay=msg.weight_decay)
    except ConfigError as err:
        raise MessageRejected(Rejection.BAD_VALUE,
                              f"training config: {'; '.join(err.problems)}") from None


def metrics_to_proto(metrics: Mapping[str, Mean], into: MutableMapping[str, pb.Metric]) -> None:
    for key, m in metrics.items():
        into[key].CopyFrom(pb.Metric(total=m.total, weight=m.weight))


def metrics_from_proto(msg: Mapping[str, pb.Metric]) -> dict[str, Mean]:
    return {key: Mean(m.total, m.weight) for key, m in msg.items()}


def scalar_to_proto(value: Scalar) -> pb.Scalar:
    if isinstance(value, bool):
        return pb.Scalar(flag=value)
    if isinstance(value, int):
        return pb.Scalar(integer=value)
    if isinstance(value, float):
        return pb.Scalar(number=value)
    return pb.Scalar(text=str(value))


def scalar_from_proto(msg: pb.Scalar) -> Scalar:
    which = msg.WhichOneof("value")
    if which == "flag":
        return msg.flag
    if which == "integer":
        return msg.integer
    if which == "number":
        return msg.number
    return msg.text


def values_to_proto(values: Mapping[str, Scalar], into: MutableMapping[str, pb.Scalar]) -> None:
    for key, value in values.items():
        into[key].CopyFrom(scalar_to_proto(value))


def values_from_proto(msg: Mapping[str, pb.Scalar]) -> dict[str, Scalar]:
    return {key: scalar_from_proto(v) for key, v in msg.items()}


def message_to_package(task_id: int, message: Message, *, kind: pb.Kind = pb.MESSAGE,
                       client_id: int) -> tuple[pb.Header, dict[str, torch.Tensor]]:
    """A user message: its scalars in ``values``, its tensors as the payload."""
    header = pb.Header(task_id=task_id, kind=kind, round=message.state, client_id=client_id,
                       msg_type=check_msg_type(message.msg_type))
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Scalar] = {}
    for key, value in message.content.items():
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().cpu().contiguous()
        elif isinstance(value, float | int | str | bool):
            scalars[key] = value
        else:
            raise ConfigError(f"message {message.msg_type!r}: content {key!r} is a "
                              f"{type(value).__name__}; send numbers, text, flags or tensors")
    values_to_proto(scalars, header.values)
    return header, tensors


def message_from_package(pkg: Package, *, sender: int, receiver: int) -> Message:
    """The message a MESSAGE or MESSAGE_REPLY package carries (tensors copied out of the
    receive buffer)."""
    h = pkg.header
    content: dict[str, Value] = dict(values_from_proto(h.values))
    content.update({name: t.clone() for name, t in pkg.tensors.items()})
    return Message(msg_type=h.msg_type, sender=sender, receiver=receiver, state=h.round,
                   content=content)


def downlink_to_package(task_id: int, downlink: Downlink,
                        values: Mapping[str, Scalar] | None = None,
                        ) -> tuple[pb.Header, dict[str, torch.Tensor]]:
    header = pb.Header(task_id=task_id, kind=pb.FIT, round=downlink.round,
                       client_id=downlink.client_id, config=config_to_proto(downlink.config))
    values_to_proto(values or {}, header.values)
    coded = any(k.startswith(CODED) for k in downlink.extras)
    tensors = {} if coded else {PARAMS: downlink.params}  # an encoded model replaces params
    tensors.update({EXTRAS + k: v for k, v in downlink.extras.items()})
    return header, tensors


def _params(pkg: Package, layout: ParamLayout) -> torch.Tensor:
    params = pkg.tensors.get(PARAMS)
    reject_if(params is None, Rejection.MALFORMED, f"no {PARAMS!r} tensor")
    assert params is not None
    reject_if(params.dtype != layout.dtype, Rejection.BAD_DTYPE,
              f"{PARAMS!r} has dtype {DTYPE_NAMES.get(params.dtype, params.dtype)}, the layout "
              f"needs {DTYPE_NAMES[layout.dtype]}")
    reject_if(tuple(params.shape) != (layout.size,), Rejection.WRONG_SHAPE,
              f"{PARAMS!r} has shape {tuple(params.shape)}, the layout needs ({layout.size},)")
    return params


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplySchema:
    """What a fit reply must carry besides its parameters, for the algorithm to use it.

    Attributes:
        extras: the extras by name and number of values (None: any extras).
        metrics: metric names that must be present (q-FFL's ``start_loss``).
        encoded: the update travels as an uplink codec's tensors (extras ``codec/<name>``, any
            dtype) instead of ``params``; the result's ``params`` is then empty until the
            server decodes it.
    """

    extras: Mapping[str, int] | None = None
    metrics: frozenset[str] = frozenset()
    encoded: bool = False


def _extras(pkg: Package, layout: ParamLayout,
            expected: Mapping[str, int] | None) -> dict[str, torch.Tensor]:
    extras: dict[str, torch.Tensor] = {}
    for name, t in pkg.tensors.items():
        if name == PARAMS:
            continue
        reject_if(not name.startswith(EXTRAS), Rejection.MALFORMED, f"unknown tensor {name!r}")
        coded = name.startswith((EXTRAS + CODEC_EXTRAS, EXTRAS + DOWN))
        reject_if(not t.is_floating_point() and not coded, Rejection.BAD_DTYPE,
                  f"{name!r} has dtype {DTYPE_NAMES.get(t.dtype, t.dtype)}: extras are floats")
        reject_if(t.dim() > 1 or t.numel() > layout.size, Rejection.WRONG_SHAPE,
                  f"{name!r} has shape {tuple(t.shape)}: extras are scalars or 1-D, at most "
                  f"({layout.size},)")
        extras[name.removeprefix(EXTRAS)] = t
    if expected is not None:
        reject_if(set(extras) != set(expected), Rejection.MALFORMED,
                  f"extras {sorted(extras)}, the algorithm needs {sorted(expected)}")
        for key, size in expected.items():
            reject_if(extras[key].numel() != size, Rejection.WRONG_SHAPE,
                      f"extras {key!r} has shape {tuple(extras[key].shape)}, "
                      f"the algorithm needs {size} values")
    return extras


def downlink_from_package(pkg: Package, layout: ParamLayout) -> Downlink:
    """A fit task; its ``params`` is empty when the model travels encoded (extras
    ``downlink/codec/...``: the client rebuilds it, see
    :func:`fedloom.compression.downlink.receive`)."""
    h = pkg.header
    extras = _extras(pkg, layout, None)
    coded = PARAMS not in pkg.tensors and any(k.startswith(CODED) for k in extras)
    params = torch.empty(0, dtype=layout.dtype) if coded else _params(pkg, layout)
    return Downlink(round=h.round, client_id=h.client_id, params=params,
                    config=config_from_proto(h.config), extras=extras)


def result_to_package(task_id: int, result: ClientResult,
                      ) -> tuple[pb.Header, dict[str, torch.Tensor]]:
    header = pb.Header(task_id=task_id, kind=pb.FIT_REPLY, round=result.round,
                       client_id=result.client_id, num_examples=result.num_examples,
                       num_steps=result.num_steps)
    metrics_to_proto(result.metrics, header.metrics)
    encoded = any(k.startswith(ENCODED) for k in result.extras)
    tensors = {} if encoded else {PARAMS: result.params}  # an encoded update replaces params
    tensors.update({EXTRAS + k: v for k, v in result.extras.items()})
    return header, tensors


def result_from_package(pkg: Package, *, layout: ParamLayout,
                        schema: ReplySchema | None = None) -> ClientResult:
    """A fit reply as a :class:`ClientResult`, checked against the layout and what the
    algorithm needs (``schema``; None: parameters only)."""
    h = pkg.header
    schema = schema or ReplySchema()
    missing = sorted(schema.metrics - set(h.metrics))
    reject_if(bool(missing), Rejection.MALFORMED, f"metrics {missing} missing; the algorithm "
              "needs them")
    if schema.encoded:
        reject_if(PARAMS in pkg.tensors, Rejection.MALFORMED, f"{PARAMS!r} sent with an "
                  "encoded update (the run compresses the uplink: send the codec's tensors)")
        params = torch.empty(0, dtype=layout.dtype)
    else:
        params = _params(pkg, layout)
    extras = _extras(pkg, layout, schema.extras)
    return ClientResult(round=h.round, client_id=h.client_id, params=params,
                        num_examples=h.num_examples, num_steps=h.num_steps,
                        metrics=metrics_from_proto(h.metrics), extras=extras)


def evaluate_to_package(task_id: int, *, round: int, client_id: int, params: torch.Tensor,
                        config: ClientConfig) -> tuple[pb.Header, dict[str, torch.Tensor]]:
    header = pb.Header(task_id=task_id, kind=pb.EVALUATE, round=round, client_id=client_id,
                       config=config_to_proto(config))
    return header, {PARAMS: params}


def metrics_header(task_id: int, kind: pb.Kind, *, round: int, client_id: int,
                   metrics: Mapping[str, Mean], num_examples: int = 0) -> pb.Header:
    header = pb.Header(task_id=task_id, kind=kind, round=round, client_id=client_id,
                       num_examples=num_examples)
    metrics_to_proto(metrics, header.metrics)
    return header


def failure_header(task_id: int, *, round: int, client_id: int, message: str) -> pb.Header:
    return pb.Header(task_id=task_id, kind=pb.FAILURE, round=round, client_id=client_id,
                     reason=message[:4000])


__all__ = [
    "EXTRAS", "MAX_TENSORS", "PARAMS", "ReplySchema", "Scalar", "config_from_proto",
    "config_to_proto", "downlink_from_package", "downlink_to_package", "evaluate_to_package",
    "failure_header", "message_from_package", "message_to_package", "layout_from_proto",
    "layout_to_proto", "metrics_from_proto",
    "metrics_header", "metrics_to_proto", "result_from_package", "result_to_package",
    "scalar_from_proto", "scalar_to_proto", "values_from_proto", "values_to_proto",
]
