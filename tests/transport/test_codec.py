"""The chunked codec: round trips, exact rejections, and a fuzzed decoder that never crashes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedloom.core.layout import ParamLayout
from fedloom.transport.codec import (
    DTYPES,
    Assembler,
    ChunkCache,
    MessageRejected,
    Rejection,
    chunk_frame,
    encode,
    fast_chunk,
)
from fedloom.transport.generated import fedloom_pb2 as pb
from fedloom.transport.sessions import Session, Task
from tests.loopback import through_the_wire


def frames_of(header: pb.Header, tensors: dict[str, torch.Tensor],
              chunk_bytes: int = 7, cache: ChunkCache | None = None) -> list[bytes]:
    return encode(header, tensors, chunk_bytes=chunk_bytes, cache=cache,
                  wrap_header=lambda h: pb.ClientFrame(header=h).SerializeToString())


def assemble(frames: list[bytes], *, max_payload: int | None = None,
             max_chunk: int = 1 << 20) -> list[object]:
    """Feed frames to a server session; the packages and rejections that came out."""
    session = Session(client_id=0, peer="test", assembler=Assembler(
        max_payload_bytes=max_payload, max_chunk_bytes=max_chunk))
    out: list[object] = []
    for raw in frames:
        try:
            pkg = session.frame(raw)
        except MessageRejected as err:
            out.append(err)
            if err.fatal:
                break
            continue
        if pkg is not None:
            out.append(pkg)
    return out


def sample(dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.tensor([[True, False, True], [False, False, True]])
    if dtype.is_floating_point:
        return torch.linspace(-3, 3, 12).reshape(3, 4).to(dtype)
    return torch.arange(12).reshape(3, 4).to(dtype)


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_every_dtype_round_trips_bit_for_bit(name: str) -> None:
    tensor = sample(DTYPES[name])
    odd = torch.arange(3, dtype=torch.uint8)  # puts the next tensor at an odd offset
    (pkg,) = assemble(frames_of(pb.Header(kind=pb.FIT_REPLY, task_id=4),
                                {"odd": odd, "t": tensor, "empty": torch.zeros(0)}))
    assert not isinstance(pkg, MessageRejected), pkg
    got = pkg.tensors  # type: ignore[attr-defined]
    assert got["t"].dtype == tensor.dtype and torch.equal(got["t"], tensor)
    assert got["empty"].shape == (0,) and torch.equal(got["odd"], odd)


@pytest.mark.parametrize("offset", [0, 1, 127, 128, 300, 2**40])
@pytest.mark.parametrize("size", [0, 1, 127, 128, 70_000])
def test_hand_built_chunk_frames_are_protobufs_own_bytes(offset: int, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    chunk = pb.Chunk(offset=offset, data=data)
    assert chunk_frame(offset, memoryview(data)) == pb.ClientFrame(chunk=chunk).SerializeToString()
    assert chunk_frame(offset, data) == pb.ServerFrame(chunk=chunk).SerializeToString()


@pytest.mark.parametrize("offset", [0, 1, 300, 2**40, 2**64 - 1])
@pytest.mark.parametrize("size", [0, 1, 128, 70_000])
def test_the_fast_chunk_reader_reads_what_chunk_frame_writes_in_place(offset: int,
                                                                      size: int) -> None:
    raw = chunk_frame(offset, bytes(range(256)) * (size // 256) + bytes(size % 256))
    got = fast_chunk(raw)
    assert got is not None and got[0] == offset and bytes(got[1]) == pb.ClientFrame.FromString(
        raw).chunk.data
    assert got[1].obj is raw  # a view of the frame, not a copy


def _assemble(assembler: Assembler, value: float) -> torch.Tensor:
    header = pb.Header(task_id=1, kind=pb.FIT_REPLY)
    return through_the_wire(header, {"p": torch.full((1 << 15,), value)}, assembler=assembler,
                            chunk_bytes=1 << 20).tensors["p"]


def test_payload_buffers_are_reused_only_once_nothing_views_them() -> None:
    assembler = Assembler(max_payload_bytes=None, max_chunk_bytes=1 << 20)
    first = _assemble(assembler, 1.0)
    address = first.data_ptr()
    second = _assemble(assembler, 2.0)  # `first` is alive: a new buffer
    assert second.data_ptr() != address and float(first[0]) == 1.0
    kept = second
    del first, second
    third = _assemble(assembler, 3.0)  # the first buffer is free again
    assert third.data_ptr() == address and float(kept[0]) == 2.0 and float(third[-1]) == 3.0


def _frame_variants(data: st.DataObject) -> bytes:
    """Chunk frames, mutated ones, frames with other fields and random bytes."""
    kind = data.draw(st.sampled_from(["chunk", "mutated", "fields", "random"]))
    if kind == "random":
        return data.draw(st.binary(max_size=40))
    chunk = pb.Chunk(offset=data.draw(st.integers(0, 2**64 - 1)),
                     data=data.draw(st.binary(max_size=20)))
    if kind == "fields":
        chunk.task_id = data.draw(st.integers(0, 2**64 - 1))
    raw = bytearray(pb.ClientFrame(chunk=chunk).SerializeToString())
    if kind == "mutated" and raw:
        for _ in range(data.draw(st.integers(1, 3))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    return bytes(raw)


@settings(max_examples=3000, deadline=None)
@given(data=st.data())
def test_the_fast_chunk_reader_agrees_with_protobuf_on_any_bytes(data: st.DataObject) -> None:
    """Whatever the fast reader accepts, protobuf parses to the same chunk of a frame with no
    other field set; what it declines still goes through protobuf."""
    raw = _frame_variants(data)
    got = fast_chunk(raw)
    if got is None:
        return
    frame = pb.ClientFrame.FromString(raw)
    assert frame.WhichOneof("frame") == "chunk" and frame.chunk.task_id == 0
    assert (frame.chunk.offset, frame.chunk.data) == (got[0], bytes(got[1]))


def test_a_model_shared_by_a_cohort_is_cut_into_frames_once() -> None:
    params = torch.arange(100, dtype=torch.float32)
    cache = ChunkCache()
    a = frames_of(pb.Header(kind=pb.FIT, task_id=1), {"params": params}, 64, cache)
    b = frames_of(pb.Header(kind=pb.FIT, task_id=2), {"params": params}, 64, cache)
    assert a[0] != b[0] and all(x is y for x, y in zip(a[1:], b[1:], strict=True))
    assert len(a) == 1 + math.ceil(400 / 64)


def _header(**fields: object) -> pb.Header:
    return pb.Header(kind=pb.FIT_REPLY, task_id=1, **fields)  # type: ignore[arg-type]


def _spec(name: str = "params", dtype: str = "float32", shape: tuple[int, ...] = (2,),
          nbytes: int | None = None) -> pb.TensorSpec:
    size = math.prod(shape) * (torch.empty((), dtype=DTYPES.get(dtype, torch.uint8))
                               .element_size())
    return pb.TensorSpec(name=name, dtype=dtype, shape=list(shape),
                         nbytes=size if nbytes is None else nbytes)


def _frame(header: pb.Header) -> bytes:
    return pb.ClientFrame(header=header).SerializeToString()


def _chunk(data: bytes, offset: int = 0) -> bytes:
    return pb.ClientFrame(chunk=pb.Chunk(offset=offset, data=data)).SerializeToString()


CASES = {
    "not protobuf": ([b"\xff\xfe\x00junk"], Rejection.MALFORMED),
    "empty frame": ([pb.ClientFrame().SerializeToString()], Rejection.UNEXPECTED),
    "second hello": ([pb.ClientFrame(hello=pb.Hello()).SerializeToString()],
                     Rejection.UNEXPECTED),
    "unknown kind": ([_frame(pb.Header(kind=77))], Rejection.MALFORMED),
    "chunk first": ([_chunk(b"1234")], Rejection.UNEXPECTED),
    "unknown dtype": ([_frame(_header(tensors=[_spec(dtype="complex64", nbytes=16)],
                                      payload_bytes=16))], Rejection.BAD_DTYPE),
    "nbytes lie": ([_frame(_header(tensors=[_spec(nbytes=12)], payload_bytes=12))],
                   Rejection.BAD_SPEC),
    "payload lie": ([_frame(_header(tensors=[_spec()], payload_bytes=9))], Rejection.BAD_SPEC),
    "negative dim": ([_frame(_header(tensors=[_spec(shape=(-1,), nbytes=0)]))],
                     Rejection.BAD_SPEC),
    "repeated name": ([_frame(_header(tensors=[_spec(), _spec()], payload_bytes=16))],
                      Rejection.BAD_SPEC),
    "oversized": ([_frame(_header(tensors=[_spec(shape=(1000,))], payload_bytes=4000))],
                  Rejection.OVERSIZED),
    "chunk past payload": ([_frame(_header(tensors=[_spec()], payload_bytes=8)),
                            _chunk(b"x" * 12)], Rejection.OVERSIZED),
    "chunk out of order": ([_frame(_header(tensors=[_spec()], payload_bytes=8)),
                            _chunk(b"x" * 4, offset=4)], Rejection.UNEXPECTED),
    "header mid payload": ([_frame(_header(tensors=[_spec()], payload_bytes=8)),
                            _chunk(b"x" * 4), _frame(_header())], Rejection.TRUNCATED),
    "nan": ([_frame(_header(tensors=[_spec()], payload_bytes=8)),
             _chunk(np.array([1.0, np.nan], np.float32).tobytes())], Rejection.NON_FINITE),
    "inf": ([_frame(_header(tensors=[_spec()], payload_bytes=8)),
             _chunk(np.array([np.inf, 0], np.float32).tobytes())], Rejection.NON_FINITE),
    "bool byte 7": ([_frame(_header(tensors=[_spec(dtype="bool", shape=(2,))],
                                    payload_bytes=2)), _chunk(b"\x01\x07")],
                    Rejection.BAD_VALUE),
    "negative count": ([_frame(_header(num_examples=-5))], Rejection.BAD_VALUE),
    "nan metric": ([_frame(_header(metrics={"loss": pb.Metric(total=math.nan, weight=1)}))],
                   Rejection.NON_FINITE),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_frame_is_rejected_with_its_named_reason(case: str) -> None:
    frames, reason = CASES[case]
    out = assemble(frames, max_payload=1024, max_chunk=64)
    rejections = [o for o in out if isinstance(o, MessageRejected)]
    assert rejections, f"{case}: accepted"
    assert rejections[0].reason == reason, rejections[0]


def test_a_content_rejection_keeps_the_stream_in_step() -> None:
    nan = np.array([np.nan, 0], np.float32).tobytes()
    good = np.array([1, 2], np.float32).tobytes()
    frames = [_frame(_header(tensors=[_spec()], payload_bytes=8)), _chunk(nan),
              _frame(_header(tensors=[_spec()], payload_bytes=8)), _chunk(good)]
    first, second = assemble(frames)
    assert isinstance(first, MessageRejected) and not first.fatal
    assert torch.equal(second.tensors["params"], torch.tensor([1.0, 2.0]))  # type: ignore[attr-defined]


def test_the_end_of_a_stream_mid_package_is_a_truncation() -> None:
    assembler = Assembler(max_payload_bytes=None, max_chunk_bytes=64)
    assembler.header(_header(tensors=[_spec()], payload_bytes=8))
    with pytest.raises(MessageRejected) as err:
        assembler.end()
    assert err.value.reason == Rejection.TRUNCATED


tensors_st = st.dictionaries(
    st.text(min_size=1, max_size=12),
    st.tuples(st.sampled_from(["float32", "float64", "int64", "uint8", "bfloat16"]),
              st.lists(st.integers(0, 5), max_size=3)), max_size=4)


@settings(max_examples=150, deadline=None)
@given(spec=tensors_st, chunk=st.integers(1, 50), seed=st.integers(0, 2**16))
def test_any_package_round_trips(spec: dict[str, tuple[str, list[int]]], chunk: int,
                                 seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    tensors = {name: (torch.randn(shape, generator=gen) * 100).to(DTYPES[dtype])
               for name, (dtype, shape) in spec.items()}
    (pkg,) = assemble(frames_of(_header(round=3), tensors, chunk))
    assert not isinstance(pkg, MessageRejected)
    got = pkg.tensors  # type: ignore[attr-defined]
    assert list(got) == list(tensors)
    for name, t in tensors.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t)


def _valid_frames() -> list[bytes]:
    params = torch.arange(6, dtype=torch.float32)
    return frames_of(_header(round=2, num_examples=4, metrics={"l": pb.Metric(total=1,
                                                                               weight=2)}),
                     {"params": params, "extras/c": torch.ones(3)}, 5)


def _mutate(frames: list[bytes], data: st.DataObject) -> list[bytes]:
    out = list(frames)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(out) - 1))
        raw = bytearray(out[i])
        op = data.draw(st.sampled_from(["flip", "cut", "dup", "drop", "insert"]))
        if op == "flip" and raw:
            j = data.draw(st.integers(0, len(raw) - 1))
            raw[j] ^= data.draw(st.integers(1, 255))
            out[i] = bytes(raw)
        elif op == "cut":
            out[i] = bytes(raw[: data.draw(st.integers(0, len(raw)))])
        elif op == "dup":
            out.insert(i, out[i])
        elif op == "drop" and len(out) > 1:
            del out[i]
        else:
            out.insert(i, data.draw(st.binary(max_size=40)))
    return out


LAYOUT = ParamLayout.from_module(torch.nn.Linear(2, 2))  # 6 values


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_frames_only_ever_give_answers_or_named_rejections(data: st.DataObject) -> None:
    """Random and mutated frames through a server session: the frame decoder, then matching
    each complete package to the open fit task and checking it against the layout."""
    frames = (_mutate(_valid_frames(), data) if data.draw(st.booleans())
              else data.draw(st.lists(st.binary(max_size=64), max_size=6)))
    session = Session(client_id=0, peer="fuzz", assembler=Assembler(
        max_payload_bytes=4096, max_chunk_bytes=64))
    for raw in frames:
        session.tasks[1] = Task(task_id=1, kind=pb.FIT, round=2, client_id=0)
        try:
            pkg = session.frame(raw)
            answer = None if pkg is None else session.answer(pkg, LAYOUT, None)
        except MessageRejected as err:
            assert err.reason in set(Rejection)
            if err.fatal:
                break
            continue
        if answer is not None:
            assert answer.result is not None and answer.result.params.shape == (6,)
            assert bool(torch.isfinite(answer.result.params).all())
