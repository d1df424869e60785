"""Who may open a stream: the server's limits, the caller's credentials, its hello.

Everything here happens before a client may send a package: a caller without a valid id or
token, or one the full server has no room for, is refused with a gRPC status and a log line; a
stream whose first frame is not a hello in this protocol is closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass

import grpc

from fedloom.core.layout import ParamLayout
from fedloom.transport.codec import DEFAULT_CHUNK_BYTES, PROTOCOL, itemsize
from fedloom.transport.generated import fedloom_pb2 as pb
from fedloom.transport.handlers import Event, Handlers, MessageType
from fedloom.transport.security import CLIENT_ID_KEY, TOKEN_KEY, TokenBook
from fedloom.transport.sessions import Session

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What the server accepts.

    Attributes:
        max_clients: clients connected at once; more are refused (RESOURCE_EXHAUSTED).
        max_update_bytes: the largest reply payload per task (None: four model sizes + 1 MiB,
            room for the model and the extras of every algorithm here).
        chunk_bytes: the chunk size the server sends and the largest it accepts.
        idle_timeout: seconds a client may stay silent before its hello, or in the middle of
            a package, before its stream is closed.
    """

    max_clients: int = 1000
    max_update_bytes: int | None = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    idle_timeout: float = 60.0

    def update_bytes(self, layout: ParamLayout) -> int:
        if self.max_update_bytes is not None:
            return self.max_update_bytes
        return 4 * layout.size * itemsize(layout.dtype) + (1 << 20)


async def authenticate(context: grpc.aio.ServicerContext[bytes, bytes], *,
                       client_ids: Collection[int] | None, tokens: TokenBook | None,
                       connected: Collection[int], limits: Limits, handlers: Handlers) -> int:
    """The caller's client id, or the call aborted (a missing or unknown id, a wrong token, a
    full server) before it can send anything."""
    meta = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    raw_id = meta.get(CLIENT_ID_KEY, "")
    token = meta.get(TOKEN_KEY, "").removeprefix("Bearer ")
    client_id = int(raw_id) if raw_id.isdigit() and len(raw_id) < 16 else None
    problem = None
    if client_id is None:
        problem = (grpc.StatusCode.UNAUTHENTICATED, "no client id in the call metadata")
    elif client_ids is not None and client_id not in client_ids:
        problem = (grpc.StatusCode.PERMISSION_DENIED, f"client id {client_id} is not one of "
                   "this run's clients")
    elif tokens is not None and not tokens.check(client_id, token):
        problem = (grpc.StatusCode.UNAUTHENTICATED,
                   f"{'no' if not token else 'a wrong'} token for client {client_id}")
    elif client_id not in connected and len(connected) >= limits.max_clients:
        problem = (grpc.StatusCode.RESOURCE_EXHAUSTED,
                   f"the server is full ({limits.max_clients} clients)")
    if problem is not None:
        log.warning("refused a client from %s: %s", context.peer(), problem[1])
        handlers.emit(Event(kind=MessageType.REFUSED, client_id=client_id,
                                 detail={"reason": problem[1]}))
        await context.abort(*problem)
    assert client_id is not None
    return client_id


async def expect_hello(requests: AsyncIterator[bytes],
                       context: grpc.aio.ServicerContext[bytes, bytes], session: Session,
                       idle_timeout: float) -> None:
    """Abort the call unless its first frame, within ``idle_timeout``, is a hello in this
    protocol."""
    try:
        raw = await asyncio.wait_for(anext(requests), idle_timeout)
        hello = pb.ClientFrame.FromString(raw)
        ok = hello.WhichOneof("frame") == "hello" and hello.hello.protocol == PROTOCOL
        detail = f"expected a hello for {PROTOCOL}"
    except (TimeoutError, StopAsyncIteration):
        ok, detail = False, f"no hello within {idle_timeout} s"
    except Exception as err:  # a frame that does not even parse
        ok, detail = False, f"malformed hello ({type(err).__name__})"
    if not ok:
        log.warning("client %d (%s): %s", session.client_id, session.peer, detail)
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, detail)
