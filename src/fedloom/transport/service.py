"""The gRPC side of a deployment server: one bidirectional stream per connected client.

:class:`FederationServer` runs grpc's asyncio server on its own thread. It refuses a client
whose id or token is wrong before reading a message from it, keeps one :class:`Session` per
connected client, sends the packages the fleet gives it and puts every answer, failure and
connection change on :attr:`FederationServer.inbox` for the fleet (on the round loop's thread) to
take. A message that fails validation is refused with a named reason, logged with the client id,
and costs at most that client's stream; everyone else is served on.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import torch

from fedloom.core.errors import TransportError
from fedloom.core.layout import ParamLayout
from fedloom.core.traffic import Meter
from fedloom.transport.admission import Admission, Limits, expect_hello, server_options, source_of
from fedloom.transport.bulk import (
    BULK_MIN_BYTES,
    split_address,
)
from fedloom.transport.bulk_channel import BulkChannel
from fedloom.transport.channel import SERVICE, grpc_options
from fedloom.transport.codec import (
    PROTOCOL,
    Assembler,
    ChunkCache,
    describe,
    encode,
)
from fedloom.transport.conduct import Conduct
from fedloom.transport.generated import fedloom_pb2 as pb
from fedloom.transport.handlers import Event, Handlers, MessageType
from fedloom.transport.inbound import Inbound
from fedloom.transport.messages import ReplySchema, layout_to_proto
from fedloom.transport.security import TlsFiles, TokenBook
from fedloom.transport.sessions import (
    Answer,
    BulkPackage,
    Connection,
    Outbound,
    Session,
    Task,
    exit_frame,
    header_frame,
)

__all__ = ["FederationServer", "Limits", "Outgoing"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A package for one client, as the fleet builds it; the server decides how it travels
    (chunk frames on the stream, or its header there and its payload on the bulk connection)."""

    header: pb.Header
    tensors: Mapping[str, torch.Tensor]


class FederationServer:
    """Accepts clients and moves packages between them and the round loop.

    Args:
        address: ``HOST:PORT`` to listen on (port 0: any free port, see :attr:`port`).
        layout: the model's layout; replies are checked against it.
        tls: the server's certificate and key (and client CA for mutual TLS); None only
            with ``insecure``.
        tokens: per-client credentials; None accepts any id in ``client_ids``.
        client_ids: the ids that may connect (None: any).
        schema: what each fit reply must carry for the algorithm (None: parameters only).
        run_config: the run config (YAML) sent to clients in the welcome.
        bulk_port: the port of the bulk connection for large payloads (0: any free port; None:
            none, every payload streams in chunk frames). See :mod:`fedloom.transport.bulk`.
    """

    def __init__(self, address: str, *, layout: ParamLayout, tls: TlsFiles | None = None,
                 insecure: bool = False, tokens: TokenBook | None = None,
                 client_ids: Collection[int] | None = None,
                 schema: ReplySchema | None = None, run_config: str = "",
                 mode: str = "sync", limits: Limits | None = None,
                 handlers: Handlers | None = None, bulk_port: int | None = 0) -> None:
        if tls is None and not insecure:
            raise TransportError("refusing to serve without TLS: give a certificate and key, "
                                 "or insecure=True (--insecure) for a loopback demo")
        self.address = address
        self.layout = layout
        self.tls = tls
        self.tokens = tokens
        self.client_ids = None if client_ids is None else frozenset(client_ids)
        self.schema = schema
        self.limits = limits or Limits()
        self.handlers = handlers or Handlers()
        self.inbox: queue.Queue[Answer | Connection] = queue.Queue()
        self.port = 0
        self.bulk_port = 0  # where the bulk listener is, once started (0: none)
        self._bulk_wanted = bulk_port
        self._bulk: BulkChannel | None = None
        self._welcome = pb.Welcome(
            protocol=PROTOCOL, layout=layout_to_proto(layout), run_config=run_config,
            max_chunk_bytes=self.limits.chunk_bytes,
            max_update_bytes=self.limits.update_bytes(layout), mode=mode)
        self._sessions: dict[int, Session] = {}
        self._lock = threading.Lock()
        self._finished: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        conduct = Conduct(max_violations=self.limits.max_violations,
                          window=self.limits.violation_window)
        self.admission = Admission(limits=self.limits, client_ids=self.client_ids,
                                   tokens=tokens, handlers=self.handlers, conduct=conduct)
        self.traffic = Meter()  # fit packages sent and fit replies accepted, framing apart
        self.inbound = Inbound(layout=layout, schema=schema, limits=self.limits,
                               handlers=self.handlers, inbox=self.inbox, bulk=lambda: self._bulk,
                               conduct=conduct, traffic=self.traffic)

    # -- lifecycle (any thread) ------------------------------------------------------------

    def start(self) -> FederationServer:
        """Listen; returns once the port is bound (raises TransportError when it cannot be)."""
        self._thread = threading.Thread(target=self._run, name="fedloom-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise TransportError(f"cannot serve on {self.address}: {self._error}")
        log.info("serving on port %d", self.port)
        return self

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving (streams still open get ``grace`` seconds to finish)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and loop.is_running():
            self._grace = grace
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout=grace + 10)

    def __enter__(self) -> FederationServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # reported by start(); the thread must not die silently
            self._error = err
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._grace = 2.0
        options = dict(grpc_options(self.limits.chunk_bytes)) | dict(server_options(self.limits))
        server = grpc.aio.server(options=list(options.items()),
                                 maximum_concurrent_rpcs=self.limits.max_clients
                                 + self.limits.max_pending)
        handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.stream_stream_rpc_method_handler(
            self._join)  # no (de)serializers: raw bytes both ways, parsed and checked here
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(SERVICE, {"Join": handler})])
        try:
            if self.tls is None:
                self.port = server.add_insecure_port(self.address)
            else:
                self.port = server.add_secure_port(self.address, self.tls.server_credentials())
        except RuntimeError as err:
            raise TransportError(str(err)) from None
        if not self.port:
            raise TransportError("the port is taken or the address is not valid")
        await server.start()
        if self._bulk_wanted is not None:
            self._bulk = BulkChannel(split_address(self.address)[0], self._bulk_wanted,
                                     tls=self.tls, limits=self.limits)
            self.bulk_port = self._bulk.port
        self._ready.set()
        try:
            await self._stop.wait()
            await server.stop(self._grace)
        finally:
            if self._bulk is not None:
                self._bulk.close()

    # -- the round loop's side (thread-safe) -------------------------------------------------

    def connected(self) -> list[int]:
        with self._lock:
            return sorted(self._sessions)

    def bulk_connected(self) -> list[int]:
        """The connected clients that also hold a bulk connection."""
        with self._lock:
            return sorted(cid for cid, s in self._sessions.items() if s.bulk is not None)

    def dispatch(self, sends: Sequence[tuple[Task, Outgoing | list[bytes]]],
                 cache: ChunkCache | None = None) -> list[bool]:
        """Queue each task's package on its client's stream; False where it is not connected.

        A package of at least ``BULK_MIN_BYTES`` goes on the bulk connection of a client that
        opened one; otherwise it is cut into chunk frames here (on the caller's thread, with
        ``cache`` sharing the frames of a tensor sent to many clients)."""
        return self._call(self._dispatch([(task, self._outbound(task, out, cache))
                                          for task, out in sends]))

    def _outbound(self, task: Task, out: Outgoing | list[bytes],
                  cache: ChunkCache | None) -> Outbound:
        if isinstance(out, list):
            return out
        with self._lock:
            session = self._sessions.get(task.client_id)
        payload = sum(t.numel() * t.element_size() for t in out.tensors.values())
        if session is not None and session.bulk is not None and payload >= BULK_MIN_BYTES:
            out.header.bulk = True
            bulk = BulkPackage(describe(out.header, out.tensors, header_frame),
                               tuple(out.tensors.values()))
            if task.kind == pb.FIT:
                self.traffic.sent(payload=payload, total=len(bulk.header_frame) + payload)
            return bulk
        frames = encode(out.header, out.tensors, wrap_header=header_frame,
                        chunk_bytes=self.limits.chunk_bytes, cache=cache)
        if task.kind == pb.FIT:
            self.traffic.sent(payload=payload, total=sum(len(f) for f in frames))
        return frames

    def expire(self, task_ids: Collection[int]) -> None:
        """Forget open tasks (a closed round): their replies are dropped as late."""
        self._call(self._expire(set(task_ids)))

    def finish(self, reason: str = "the run is over") -> None:
        """Tell every client to exit, now and whenever one connects from here on."""
        self._finished = reason
        if self._loop is not None and self._loop.is_running():
            self._call(self._exit_all(reason))

    def reconnect(self, client_ids: Collection[int], seconds: float = 0.0) -> None:
        """Ask clients to close their stream and reconnect after ``seconds`` (their open tasks
        fail)."""
        self._call(self._reconnect(set(client_ids), seconds))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None or not loop.is_running():
            coro.close()
            raise TransportError("the server is not running")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    async def _dispatch(self, sends: Sequence[tuple[Task, Outbound]]) -> list[bool]:
        sent = []
        for task, frames in sends:
            session = self._sessions.get(task.client_id)
            ok = session is not None and session.close_reason is None
            if session is not None and ok:
                session.tasks[task.task_id] = task
                session.outbox.put_nowait(frames)
            sent.append(ok)
        return sent

    async def _expire(self, task_ids: set[int]) -> None:
        for session in list(self._sessions.values()):
            for task_id in task_ids & set(session.tasks):
                session.expire(task_id)

    async def _reconnect(self, client_ids: set[int], seconds: float) -> None:
        frame = pb.ServerFrame(header=pb.Header(kind=pb.RECONNECT, seconds=seconds,
                                                reason="asked to reconnect"))
        for cid in client_ids:
            session = self._sessions.get(cid)
            if session is not None:
                session.outbox.put_nowait([frame.SerializeToString()])
                self.inbound.drop(session, "asked to reconnect")

    async def _exit_all(self, reason: str) -> None:
        for session in list(self._sessions.values()):
            session.outbox.put_nowait([exit_frame(reason)])
            session.close(reason)

    # -- one client's stream (event loop) ----------------------------------------------------

    async def _join(self, requests: AsyncIterator[bytes],
                    context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        source = source_of(context.peer())
        full = self.admission.enter(source)
        if full is not None:
            await self.admission.refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, full, None)
        try:
            with self._lock:
                connected = frozenset(self._sessions)
            client_id = await self.admission.authenticate(context, connected=connected)
            session = Session(client_id=client_id, peer=context.peer(), assembler=Assembler(
                max_payload_bytes=self.limits.update_bytes(self.layout),
                max_chunk_bytes=self.limits.chunk_bytes))
            await expect_hello(requests, context, session, self.limits.handshake_timeout)
        finally:
            self.admission.leave(source)
        if self._bulk is not None:
            session.ticket = self._bulk.issue(session)
        self._register(session)
        reader = asyncio.create_task(self.inbound.read(requests, session))
        try:
            yield self._welcome_frame(session)
            if self._finished is not None:
                yield exit_frame(self._finished)
                return
            while (item := await session.outbox.get()) is not None:
                if isinstance(item, BulkPackage):
                    yield item.header_frame
                    if not await self._send_bulk(session, item):
                        break
                    continue
                for frame in item:
                    yield frame
        finally:
            reader.cancel()
            self._unregister(session)
            if self._bulk is not None:
                self._bulk.release(session)
        if session.close_reason and session.close_reason.startswith("rejected"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, session.close_reason)

    def _welcome_frame(self, session: Session) -> bytes:
        welcome = pb.Welcome()
        welcome.CopyFrom(self._welcome)
        if session.ticket:
            welcome.bulk_port, welcome.bulk_ticket = self.bulk_port, session.ticket
        return pb.ServerFrame(welcome=welcome).SerializeToString()

    async def _send_bulk(self, session: Session, item: BulkPackage) -> bool:
        """Write a package's payload on the bulk connection; False (session dropped) when it
        failed."""
        assert self._bulk is not None
        try:
            await self._bulk.send(session, item.tensors)
        except OSError as err:
            self.inbound.drop(session, f"bulk connection lost ({err})")
            return False
        return True

    def _register(self, session: Session) -> None:
        with self._lock:
            old = self._sessions.get(session.client_id)
            self._sessions[session.client_id] = session
        if old is not None:  # told to exit, so two processes for one id do not take turns
            reason = "superseded by a new connection of the same client"
            old.outbox.put_nowait([exit_frame(reason)])
            self.inbound.drop(old, reason)
        log.info("client %d connected from %s", session.client_id, session.peer)
        self.inbox.put(Connection(client_id=session.client_id, up=True))
        self.handlers.emit(Event(kind=MessageType.CONNECTED, client_id=session.client_id,
                                 detail={"peer": session.peer}))

    def _unregister(self, session: Session) -> None:
        with self._lock:
            if self._sessions.get(session.client_id) is session:
                del self._sessions[session.client_id]
            else:
                return
        self.inbound.drop(session, session.close_reason or "disconnected")
        self.inbox.put(Connection(client_id=session.client_id, up=False))
        self.handlers.emit(Event(kind=MessageType.DISCONNECTED, client_id=session.client_id,
                                 detail={"reason": session.close_reason or "disconnected"}))


