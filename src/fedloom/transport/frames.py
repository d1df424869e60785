"""Packages as frames: a header frame, then the tensors' raw bytes in chunk frames.

The encoding side of :mod:`fedloom.transport.codec`: :func:`encode` (every frame at once, chunks
shared between clients through a :class:`ChunkCache`), :func:`stream` (frames made as they are
sent) and :func:`describe` (the header alone, for payloads that travel on the bulk connection);
:func:`fast_chunk` reads a chunk frame in place on the receiving side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch

from fedloom.core.errors import TransportError
from fedloom.transport.generated import fedloom_pb2 as pb

DEFAULT_CHUNK_BYTES = 1 << 20

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32,
    "int16": torch.int16, "int8": torch.int8,  # quantised updates (compression.uplink=qsgd)
    "uint8": torch.uint8, "bool": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}

def _raw(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's bytes as a flat uint8 array (no copy when already contiguous on cpu)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy() if flat.numel() else np.empty(0, np.uint8)


def tensor_spec(name: str, tensor: torch.Tensor) -> pb.TensorSpec:
    if tensor.dtype not in DTYPE_NAMES:
        raise TransportError(f"tensor {name!r}: dtype {tensor.dtype} cannot be sent "
                             f"(allowed: {', '.join(DTYPES)})")
    return pb.TensorSpec(name=name, dtype=DTYPE_NAMES[tensor.dtype], shape=list(tensor.shape),
                         nbytes=tensor.numel() * tensor.element_size())


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def chunk_frame(offset: int, data: bytes | memoryview) -> bytes:
    """A serialized ``ClientFrame``/``ServerFrame`` holding ``Chunk(offset, data)`` (both frames
    carry the chunk as field 3, so the bytes are the same), built with one copy of ``data``
    instead of protobuf's three; a test checks it against protobuf's own serialization."""
    head = ((b"\x10" + _varint(offset) if offset else b"")
            + (b"\x1a" + _varint(len(data)) if len(data) else b""))
    return b"".join((b"\x1a", _varint(len(head) + len(data)), head, data))


def _read_varint(raw: bytes | memoryview, pos: int) -> tuple[int, int] | None:
    """The varint at ``pos`` and the position after it (None: truncated or over 10 bytes)."""
    value = shift = 0
    for i in range(pos, min(pos + 10, len(raw))):
        byte = raw[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    return None


def fast_chunk(raw: bytes) -> tuple[int, memoryview] | None:
    """``(offset, data)`` of a frame in exactly the form :func:`chunk_frame` writes, with
    ``data`` a view of ``raw`` (protobuf's parser would copy every chunk once more); None for
    any other frame, which then goes through protobuf. A frame this accepts parses to the same
    chunk under protobuf (a property test checks it on arbitrary bytes)."""
    if not raw or raw[0] != 0x1A:
        return None
    got = _read_varint(raw, 1)
    if got is None or got[0] != len(raw) - got[1]:
        return None
    pos, offset = got[1], 0
    if pos < len(raw) and raw[pos] == 0x10:
        got = _read_varint(raw, pos + 1)
        if got is None or got[0] >= 1 << 64:
            return None
        offset, pos = got
    if pos == len(raw):
        return offset, memoryview(raw)[pos:]
    if raw[pos] != 0x1A:
        return None
    got = _read_varint(raw, pos + 1)
    if got is None or got[0] != len(raw) - got[1]:
        return None
    return offset, memoryview(raw)[got[1]:]


class ChunkCache:
    """Chunk frames of tensors already encoded at a given payload offset (a round's model,
    sent to every client of the cohort, is cut into frames once)."""

    def __init__(self) -> None:
        self._frames: dict[tuple[int, int], tuple[torch.Tensor, list[bytes]]] = {}

    def get(self, tensor: torch.Tensor, offset: int) -> list[bytes] | None:
        hit = self._frames.get((id(tensor), offset))
        return hit[1] if hit is not None and hit[0] is tensor else None

    def put(self, tensor: torch.Tensor, offset: int, frames: list[bytes]) -> None:
        self._frames[(id(tensor), offset)] = (tensor, frames)


def chunk_frames(tensor: torch.Tensor, offset: int, chunk_bytes: int) -> list[bytes]:
    view = _raw(tensor).data
    return [chunk_frame(offset + start, view[start:start + chunk_bytes])
            for start in range(0, len(view), chunk_bytes)]


def encode(header: pb.Header, tensors: Mapping[str, torch.Tensor], *,
           wrap_header: Callable[[pb.Header], bytes], chunk_bytes: int = DEFAULT_CHUNK_BYTES,
           cache: ChunkCache | None = None) -> list[bytes]:
    """The frames of one package: the header (its tensor specs filled in), then the chunks."""
    header_frame = describe(header, tensors, wrap_header)
    frames = [header_frame]
    offset = 0
    for tensor in tensors.values():
        chunks = cache.get(tensor, offset) if cache is not None else None
        if chunks is None:
            chunks = chunk_frames(tensor, offset, _check_chunk(chunk_bytes))
            if cache is not None:
                cache.put(tensor, offset, chunks)
        frames.extend(chunks)
        offset += tensor.numel() * tensor.element_size()
    return frames


def stream(header: pb.Header, tensors: Mapping[str, torch.Tensor], *,
           wrap_header: Callable[[pb.Header], bytes],
           chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
    """The frames of one package, each made when it is sent: one chunk in memory at a time
    instead of a second copy of the whole payload."""
    header_frame = describe(header, tensors, wrap_header)
    raws = [_raw(t) for t in tensors.values()]
    step = _check_chunk(chunk_bytes)

    def frames() -> Iterator[bytes]:
        yield header_frame
        offset = 0
        for raw in raws:
            view = raw.data
            for start in range(0, len(view), step):
                yield chunk_frame(offset + start, view[start:start + step])
            offset += len(view)

    return frames()


def describe(header: pb.Header, tensors: Mapping[str, torch.Tensor],
             wrap_header: Callable[[pb.Header], bytes]) -> bytes:
    """Fill in the header's tensor specs and payload size; the serialized header frame."""
    del header.tensors[:]
    for name, tensor in tensors.items():
        header.tensors.append(tensor_spec(name, tensor))
    header.payload_bytes = sum(spec.nbytes for spec in header.tensors)
    return wrap_header(header)


def _check_chunk(chunk_bytes: int) -> int:
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes = {chunk_bytes}: must be >= 1")
    return chunk_bytes
