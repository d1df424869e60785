"""What the server knows about one connected client: its stream's state and its open tasks.

A :class:`Session` lives on the server's event loop. It turns the client's frames into packages
(:class:`~fedloom.transport.codec.Assembler`), matches each reply to the task it answers and
checks it against the layout; what it accepts or refuses becomes an :class:`Answer` for the fleet.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from google.protobuf.message import DecodeError

from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientFailure, ClientResult
from fedloom.transport.codec import (
    Assembler,
    MessageRejected,
    Package,
    Rejection,
    fast_chunk,
    reject_if,
)
from fedloom.transport.generated import fedloom_pb2 as pb
from fedloom.transport.handlers import SERVER, Message
from fedloom.transport.messages import (
    ReplySchema,
    Scalar,
    message_from_package,
    metrics_from_proto,
    result_from_package,
    values_from_proto,
)

REPLY_OF = {pb.FIT: pb.FIT_REPLY, pb.EVALUATE: pb.EVALUATE_REPLY,
            pb.PROPERTIES: pb.PROPERTIES_REPLY, pb.MESSAGE: pb.MESSAGE_REPLY}
EXPIRED_KEPT = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    """An instruction sent to a client, waiting for its reply."""

    task_id: int
    kind: pb.Kind
    round: int
    client_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """A client's answer to a task (exactly one of result, failure, metrics, values, message
    is set)."""

    task_id: int
    client_id: int
    result: ClientResult | None = None
    failure: ClientFailure | None = None
    metrics: Mapping[str, Mean] | None = None
    values: Mapping[str, Scalar] | None = None
    message: Message | None = None
    num_examples: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    """A client connected (``up``) or went away."""

    client_id: int
    up: bool


@dataclass(frozen=True, slots=True)
class BulkPackage:
    """A package on its way out: its header frame on the stream, its tensors' bytes on the bulk
    connection."""

    header_frame: bytes
    tensors: tuple[torch.Tensor, ...]


Outbound = list[bytes] | BulkPackage


@dataclass(slots=True, kw_only=True)
class Session:
    """One client's stream on the server."""

    client_id: int
    peer: str
    assembler: Assembler
    outbox: asyncio.Queue[Outbound | None] = field(default_factory=asyncio.Queue)
    tasks: dict[int, Task] = field(default_factory=dict)
    expired: deque[int] = field(default_factory=lambda: deque(maxlen=EXPIRED_KEPT))
    close_reason: str | None = None
    ticket: bytes = b""  # presented on the bulk port to pair a bulk connection with this session
    bulk: socket.socket | None = None  # the bulk connection, once the client opened it
    received_bytes: int = 0  # stream frames of the package being received, for counting

    def close(self, reason: str) -> None:
        """End the stream after what is queued (the writer stops at the None)."""
        if self.close_reason is None:
            self.close_reason = reason
            self.outbox.put_nowait(None)

    def frame(self, raw: bytes) -> Package | None:
        """Take one raw frame; returns a package once one is complete."""
        chunk = fast_chunk(raw)
        if chunk is not None:
            return self.assembler.data(*chunk)
        try:
            frame = pb.ClientFrame.FromString(raw)
        except (DecodeError, ValueError, RuntimeError) as err:
            raise MessageRejected(Rejection.MALFORMED, f"not a ClientFrame ({err})",
                                  fatal=True) from None
        which = frame.WhichOneof("frame")
        if which == "header":
            reject_if(frame.header.bulk and self.bulk is None, Rejection.UNEXPECTED,
                      "a header says bulk, but this client has no bulk connection", fatal=True)
            return self.assembler.header(frame.header)
        if which == "chunk":
            return self.assembler.chunk(frame.chunk)
        raise MessageRejected(Rejection.UNEXPECTED, f"{which or 'an empty frame'} after the "
                              "hello", fatal=True)

    def expire(self, task_id: int) -> None:
        if self.tasks.pop(task_id, None) is not None:
            self.expired.append(task_id)

    def task_of(self, header: pb.Header | None) -> Task | None:
        return None if header is None else self.tasks.get(header.task_id)

    def answer(self, pkg: Package, layout: ParamLayout,
               schema: ReplySchema | None) -> Answer | None:
        """The answer a complete package gives to its task (None: a late reply, dropped)."""
        h = pkg.header
        task = self.tasks.get(h.task_id)
        if task is None and h.task_id in self.expired:
            return None
        reject_if(task is None, Rejection.UNKNOWN_TASK, f"task {h.task_id} is not open")
        assert task is not None
        reject_if(h.client_id != self.client_id or h.round != task.round, Rejection.UNKNOWN_TASK,
                  f"reply for client {h.client_id} round {h.round}; task {task.task_id} is "
                  f"client {self.client_id} round {task.round}")
        reject_if(h.kind not in (REPLY_OF[task.kind], pb.FAILURE), Rejection.UNKNOWN_TASK,
                  f"a {pb.Kind.Name(h.kind)} answering a {pb.Kind.Name(task.kind)} task")
        tid, cid = task.task_id, self.client_id
        if h.kind == pb.FAILURE:
            answer = Answer(task_id=tid, client_id=cid, failure=ClientFailure(
                round=task.round, client_id=cid, stage="client",
                message=h.reason or "the client reported a failure"))
        elif h.kind == pb.FIT_REPLY:
            reject_if(h.num_examples < 1, Rejection.BAD_VALUE,
                      f"num_examples = {h.num_examples}: a fit reply needs >= 1")
            answer = Answer(task_id=tid, client_id=cid,
                            result=result_from_package(pkg, layout=layout, schema=schema))
        elif h.kind == pb.EVALUATE_REPLY:
            answer = Answer(task_id=tid, client_id=cid, metrics=metrics_from_proto(h.metrics),
                            num_examples=h.num_examples)
        elif h.kind == pb.MESSAGE_REPLY:
            answer = Answer(task_id=tid, client_id=cid,
                            message=message_from_package(pkg, sender=cid, receiver=SERVER))
        else:
            answer = Answer(task_id=tid, client_id=cid, values=values_from_proto(h.values))
        del self.tasks[task.task_id]
        return answer


def header_frame(header: pb.Header) -> bytes:
    """A header as one server frame on the stream."""
    return pb.ServerFrame(header=header).SerializeToString()


def exit_frame(reason: str) -> bytes:
    """The instruction to exit, with its reason."""
    return header_frame(pb.Header(kind=pb.EXIT, reason=reason))
