"""Packages over a stream: a header frame, then the tensors' bytes in bounded chunks.

A package is one :class:`~fedloom.transport.generated.fedloom_pb2.Header` plus named tensors. On
the wire it is the header frame followed by chunk frames that carry the tensors' raw bytes back
to back, in the order the header lists them. Chunks are at most ``chunk_bytes`` long; payloads
have no cap, so a model of any size streams. A chunk belongs to the header before it on the same
stream and carries no task id, so the chunks of a tensor sent to many clients are encoded once.

Nothing is unpickled. :class:`Assembler` checks every declaration (dtype, shape, sizes, order)
before it accepts a byte and every float it assembled before it hands a package on; a bad frame
raises :class:`MessageRejected` naming a :class:`Rejection`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
from numpy.typing import NDArray

from fedloom.core.errors import TransportError
from fedloom.core.finite import all_finite
from fedloom.transport.frames import (
    DEFAULT_CHUNK_BYTES,
    DTYPE_NAMES,
    DTYPES,
    ChunkCache,
    chunk_frame,
    chunk_frames,
    describe,
    encode,
    fast_chunk,
    stream,
    tensor_spec,
)
from fedloom.transport.generated import fedloom_pb2 as pb
from fedloom.transport.handlers import MSG_TYPE

__all__ = [
    "DEFAULT_CHUNK_BYTES", "DTYPES", "DTYPE_NAMES", "PROTOCOL", "Assembler", "ChunkCache",
    "MessageRejected", "Package", "Rejection", "all_finite", "check_content", "check_header",
    "chunk_frame", "chunk_frames", "describe", "encode", "fast_chunk", "itemsize", "stream",
    "tensor_spec", "unpack",
]

PROTOCOL = "fedloom/1"
MAX_TENSORS = 64
MAX_NAME = 200
MAX_DIMS = 8
MAX_VALUES = 256
MAX_TEXT = 4096
MAX_COUNT = 1 << 53  # num_examples, num_steps, round, client id: exact as float64
MAX_METRIC = 1e150  # a metric's |total| and weight: a sum of 2^53 of them stays finite

KINDS = frozenset(pb.Kind.values()) - {pb.KIND_UNSPECIFIED}


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class Rejection(StrEnum):
    """Why an incoming message was refused."""

    MALFORMED = "malformed"  # not a parseable frame, or a required field missing
    UNEXPECTED = "unexpected"  # a frame out of protocol order (a chunk with no header ...)
    UNKNOWN_TASK = "unknown_task"  # a reply to no outstanding task, or of the wrong kind
    OVERSIZED = "oversized"  # declares or sends more bytes than allowed
    TRUNCATED = "truncated"  # the payload ended before its declared size
    BAD_DTYPE = "bad_dtype"  # a dtype not on the list, or not the layout's
    BAD_SPEC = "bad_spec"  # a shape or size that contradicts itself
    WRONG_SHAPE = "wrong_shape"  # a tensor whose shape is not what the layout needs
    NON_FINITE = "non_finite"  # NaN or infinite values
    BAD_VALUE = "bad_value"  # a field out of range (negative counts, bad config, long text)
    TOO_SLOW = "too_slow"  # a package not complete by its transfer deadline
    VIOLATIONS = "too_many_violations"  # too many rejected messages in a window


class MessageRejected(TransportError):
    """An incoming message failed validation.

    Attributes:
        reason: the named reason.
        detail: what exactly was wrong.
        fatal: the stream cannot continue (framing is lost); otherwise only the package is.
    """

    def __init__(self, reason: Rejection, detail: str, *, fatal: bool = False) -> None:
        self.reason = reason
        self.detail = detail
        self.fatal = fatal
        super().__init__(f"rejected ({reason.value}): {detail}")


def reject_if(bad: bool, reason: Rejection, detail: str, *, fatal: bool = False) -> None:
    if bad:
        raise MessageRejected(reason, detail, fatal=fatal)


@dataclass(frozen=True, slots=True, kw_only=True)
class Package:
    """A header with the tensors its payload carried (read-only views of one buffer)."""

    header: pb.Header
    tensors: Mapping[str, torch.Tensor]


def check_header(header: pb.Header, max_payload_bytes: int | None) -> None:
    """Every declaration of a header, before any of its payload is accepted."""
    reject_if(header.kind not in KINDS, Rejection.MALFORMED, f"unknown kind {header.kind}",
              fatal=True)
    reject_if(len(header.tensors) > MAX_TENSORS, Rejection.BAD_SPEC,
              f"{len(header.tensors)} tensors, at most {MAX_TENSORS}", fatal=True)
    names: set[str] = set()
    total = 0
    for spec in header.tensors:
        reject_if(not 0 < len(spec.name) <= MAX_NAME or spec.name in names, Rejection.BAD_SPEC,
                  f"tensor name {spec.name[:MAX_NAME]!r}: empty, too long or repeated",
                  fatal=True)
        names.add(spec.name)
        reject_if(spec.dtype not in DTYPES, Rejection.BAD_DTYPE,
                  f"tensor {spec.name!r}: dtype {spec.dtype[:40]!r} not one of "
                  f"{', '.join(DTYPES)}", fatal=True)
        reject_if(len(spec.shape) > MAX_DIMS or any(d < 0 for d in spec.shape),
                  Rejection.BAD_SPEC, f"tensor {spec.name!r}: shape {list(spec.shape)[:10]}",
                  fatal=True)
        need = math.prod(spec.shape) * itemsize(DTYPES[spec.dtype])
        reject_if(spec.nbytes != need, Rejection.BAD_SPEC,
                  f"tensor {spec.name!r}: declares {spec.nbytes} bytes, its shape "
                  f"{list(spec.shape)} of {spec.dtype} needs {need}", fatal=True)
        total += need
    reject_if(header.payload_bytes != total, Rejection.BAD_SPEC,
              f"payload_bytes = {header.payload_bytes}, the tensors need {total}", fatal=True)
    reject_if(max_payload_bytes is not None and total > max_payload_bytes, Rejection.OVERSIZED,
              f"payload of {total} bytes, at most {max_payload_bytes} allowed", fatal=True)


def check_content(header: pb.Header) -> None:
    """A header's values, metrics and counts (checked once its payload is in, so that a bad
    value costs the package, not the stream)."""
    reject_if(len(header.values) > MAX_VALUES or len(header.metrics) > MAX_VALUES,
              Rejection.BAD_VALUE, f"more than {MAX_VALUES} values or metrics")
    reject_if(len(header.reason) > MAX_TEXT, Rejection.BAD_VALUE,
              f"reason of {len(header.reason)} characters, at most {MAX_TEXT}")
    for key, value in header.values.items():
        reject_if(len(key) > MAX_NAME or len(value.text) > MAX_TEXT or not key.isprintable(),
                  Rejection.BAD_VALUE, f"value {key[:MAX_NAME]!r}: key too long or not "
                  "printable, or text too long")
        reject_if(value.WhichOneof("value") == "number" and not math.isfinite(value.number),
                  Rejection.NON_FINITE, f"value {key!r} = {value.number}")
    for key, metric in header.metrics.items():
        reject_if(len(key) > MAX_NAME or not key.isprintable(), Rejection.BAD_VALUE,
                  f"metric name {key[:MAX_NAME]!r}: too long or not printable")
        reject_if(not (math.isfinite(metric.total) and math.isfinite(metric.weight)),
                  Rejection.NON_FINITE, f"metric {key!r} = ({metric.total}, {metric.weight})")
        empty = metric.total == 0 and metric.weight == 0  # no data: adds nothing to a mean
        reject_if(metric.weight <= 0 and not empty, Rejection.BAD_VALUE,
                  f"metric {key!r} has weight {metric.weight}: must be > 0")
        reject_if(max(abs(metric.total), metric.weight) > MAX_METRIC, Rejection.BAD_VALUE,
                  f"metric {key!r} = ({metric.total}, {metric.weight}): beyond {MAX_METRIC:g}, "
                  "a sum over clients could overflow")
    reject_if(len(header.msg_type) > 64 or (header.kind in (pb.MESSAGE, pb.MESSAGE_REPLY) and
                                            not MSG_TYPE.fullmatch(header.msg_type)),
              Rejection.BAD_VALUE, f"message type {header.msg_type[:64]!r}")
    for name in ("round", "client_id", "num_examples", "num_steps"):
        value = getattr(header, name)
        reject_if(not 0 <= value < MAX_COUNT, Rejection.BAD_VALUE, f"{name} = {value}")


_EMPTY: NDArray[np.uint8] = np.empty(0, np.uint8)


class Assembler:
    """Rebuilds packages from one stream's header and chunk frames, checking everything.

    Args:
        max_payload_bytes: the largest payload accepted (None: no limit).
        max_chunk_bytes: the largest chunk accepted.
    """

    def __init__(self, *, max_payload_bytes: int | None, max_chunk_bytes: int) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.max_chunk_bytes = max_chunk_bytes
        self._header: pb.Header | None = None
        self._buffer = _EMPTY
        self._spares: list[NDArray[np.uint8]] = []  # the last payloads' buffers, for reuse
        self._received = 0

    @property
    def busy(self) -> bool:
        """A header arrived whose payload is not complete yet."""
        return self._header is not None

    @property
    def pending(self) -> pb.Header | None:
        return self._header

    def header(self, header: pb.Header) -> Package | None:
        """Start a package; returns it at once when it has no payload. A header that says
        ``bulk`` waits for :meth:`payload_view` to be filled and :meth:`bulk_done`."""
        reject_if(self.busy, Rejection.TRUNCATED,
                  f"a new header arrived after {self._received} of "
                  f"{self._header.payload_bytes if self._header else 0} payload bytes",
                  fatal=True)
        check_header(header, self.max_payload_bytes)
        self._header = header
        self._buffer = self._take_buffer(header.payload_bytes)
        self._received = 0
        return self._finish() if header.payload_bytes == 0 else None

    @property
    def bulk_pending(self) -> bool:
        """The package in progress has its payload on the bulk connection."""
        return self._header is not None and self._header.bulk

    def payload_view(self) -> memoryview:
        """Where the pending bulk payload's bytes go (all of them, in order)."""
        assert self.bulk_pending
        return self._buffer.data

    def bulk_done(self) -> Package:
        """The pending bulk package, its payload view filled; checked like any other."""
        assert self._header is not None and self._header.bulk
        self._received = self._header.payload_bytes
        return self._finish()

    def chunk(self, chunk: pb.Chunk) -> Package | None:
        """Add the next chunk; returns the package when its payload is complete."""
        return self.data(chunk.offset, chunk.data)

    def data(self, offset: int, data: bytes | memoryview) -> Package | None:
        """Add the next chunk's bytes, which belong at ``offset`` of the payload."""
        header = self._header
        reject_if(header is None, Rejection.UNEXPECTED, "a chunk with no header before it",
                  fatal=True)
        assert header is not None
        reject_if(header.bulk, Rejection.UNEXPECTED, "a chunk for a package whose header said "
                  "its payload comes on the bulk connection", fatal=True)
        size = len(data)
        reject_if(offset != self._received, Rejection.UNEXPECTED,
                  f"chunk at offset {offset}, expected {self._received}", fatal=True)
        reject_if(size == 0 or size > self.max_chunk_bytes, Rejection.OVERSIZED,
                  f"chunk of {size} bytes (1 to {self.max_chunk_bytes} allowed)", fatal=True)
        reject_if(self._received + size > header.payload_bytes, Rejection.OVERSIZED,
                  f"chunks exceed the declared payload of {header.payload_bytes} bytes",
                  fatal=True)
        self._buffer[self._received:self._received + size] = np.frombuffer(data, np.uint8)
        self._received += size
        return self._finish() if self._received == header.payload_bytes else None

    SPARES = 2  # buffers kept: a caller may hold the last package while the next one arrives

    def _take_buffer(self, size: int) -> NDArray[np.uint8]:
        """A buffer for the next payload: one of the last payloads' when no tensor views it any
        more (fresh pages cost more than the copy itself), else a new one."""
        for i in range(len(self._spares)):
            # references: the list's and getrefcount's argument; a tensor viewing it adds one
            if self._spares[i].shape[0] == size and sys.getrefcount(self._spares[i]) == 2:
                return self._spares.pop(i)
        return torch.empty(size, dtype=torch.uint8).numpy()

    def end(self) -> None:
        """The stream ended: a package still in progress was truncated."""
        if self._header is not None:
            received, declared = self._received, self._header.payload_bytes
            self._header = None
            raise MessageRejected(Rejection.TRUNCATED, f"stream ended after {received} of "
                                  f"{declared} payload bytes", fatal=True)

    def _finish(self) -> Package:
        header = self._header
        assert header is not None
        self._header = None
        buffer, self._buffer = self._buffer, _EMPTY
        if buffer.shape[0] >= 1 << 16:
            self._spares = [buffer, *self._spares][:self.SPARES]
        check_content(header)
        return Package(header=header, tensors=unpack(header.tensors, buffer))


def unpack(specs: Sequence[pb.TensorSpec], buffer: NDArray[np.uint8]
           ) -> dict[str, torch.Tensor]:
    """The tensors the specs declare, as views of ``buffer`` (copied only when misaligned);
    floating tensors must be finite."""
    tensors: dict[str, torch.Tensor] = {}
    offset = 0
    for spec in specs:
        dtype = DTYPES[spec.dtype]
        shape = tuple(spec.shape)
        if spec.nbytes == 0:
            tensors[spec.name] = torch.empty(shape, dtype=dtype)
            continue
        raw = torch.from_numpy(buffer[offset:offset + spec.nbytes])
        if offset % itemsize(dtype):
            raw = raw.clone()
        tensor = raw.view(dtype).reshape(shape)
        if tensor.is_floating_point():
            reject_if(not all_finite(tensor), Rejection.NON_FINITE,
                      f"tensor {spec.name!r} holds NaN or infinite values")
        elif dtype == torch.bool:
            reject_if(int(raw.max()) > 1, Rejection.BAD_VALUE,
                      f"bool tensor {spec.name!r} holds bytes other than 0 and 1")
        tensors[spec.name] = tensor
        offset += spec.nbytes
    return tensors


