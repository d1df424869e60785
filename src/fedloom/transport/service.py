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
from fedloom.core.packages import ClientFailure
from fedloom.transport.bulk import (
    BULK_MIN_BYTES,
    split_address,
)
from fedloom.transport.bulk_channel import BulkChannel
from fedloom.transport.channel import SERVICE, grpc_options
from fedloom.transport.codec import (
    DEFAULT_CHUNK_BYTES,
    PROTOCOL,
    Assembler,
    ChunkCache,
    MessageRejected,
    Package,
    describe,
    encode,
    itemsize,
)
from fedloom.transport.generated import fedloom_pb2 as pb
from fedloom.transport.handlers import Event, Handlers, MessageType
from fedloom.transport.messages import ReplySchema, layout_to_proto
from fedloom.transport.security import CLIENT_ID_KEY, TOKEN_KEY, TlsFiles, TokenBook
from fedloom.transport.sessions import Answer, BulkPackage, Connection, Outbound, Session, Task

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A package for one client, as the fleet builds it; the server decides how it travels
    (chunk frames on the stream, or its header there and its payload on the bulk connection)."""

    header: pb.Header
    tensors: Mapping[str, torch.Tensor]


def _header_frame(header: pb.Header) -> bytes:
    return pb.ServerFrame(header=header).SerializeToString()

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
        server = grpc.aio.server(options=grpc_options(self.limits.chunk_bytes),
                                 maximum_concurrent_rpcs=self.limits.max_clients + 16)
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
                                     tls=self.tls, idle_timeout=self.limits.idle_timeout,
                                     max_clients=self.limits.max_clients)
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
            return BulkPackage(describe(out.header, out.tensors, _header_frame),
                               tuple(out.tensors.values()))
        return encode(out.header, out.tensors, wrap_header=_header_frame,
                      chunk_bytes=self.limits.chunk_bytes, cache=cache)

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
                self._drop(session, "asked to reconnect")

    async def _exit_all(self, reason: str) -> None:
        for session in list(self._sessions.values()):
            session.outbox.put_nowait([exit_frame(reason)])
            session.close(reason)

    # -- one client's stream (event loop) ----------------------------------------------------

    async def _join(self, requests: AsyncIterator[bytes],
                    context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        client_id = await self._authenticate(context)
        session = Session(client_id=client_id, peer=context.peer(), assembler=Assembler(
            max_payload_bytes=self.limits.update_bytes(self.layout),
            max_chunk_bytes=self.limits.chunk_bytes))
        await self._hello(requests, context, session)
        if self._bulk is not None:
            session.ticket = self._bulk.issue(session)
        self._register(session)
        reader = asyncio.create_task(self._read(requests, session))
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

    async def _receive_bulk(self, session: Session) -> None:
        """Read the pending package's payload from the bulk connection, then take it."""
        assert self._bulk is not None
        header = session.assembler.pending
        try:
            pkg = await self._bulk.receive(session)
        except MessageRejected as rejection:
            if rejection.fatal:
                raise
            self._reject(session, rejection, header)  # the package is lost, not the stream
            return
        self._take(session, pkg)

    async def _send_bulk(self, session: Session, item: BulkPackage) -> bool:
        """Write a package's payload on the bulk connection; False (session dropped) when it
        failed."""
        assert self._bulk is not None
        try:
            await self._bulk.send(session, item.tensors)
        except OSError as err:
            self._drop(session, f"bulk connection lost ({err})")
            return False
        return True

    async def _authenticate(self, context: grpc.aio.ServicerContext[bytes, bytes]) -> int:
        meta = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        raw_id = meta.get(CLIENT_ID_KEY, "")
        token = meta.get(TOKEN_KEY, "").removeprefix("Bearer ")
        client_id = int(raw_id) if raw_id.isdigit() and len(raw_id) < 16 else None
        problem = None
        if client_id is None:
            problem = (grpc.StatusCode.UNAUTHENTICATED, "no client id in the call metadata")
        elif self.client_ids is not None and client_id not in self.client_ids:
            problem = (grpc.StatusCode.PERMISSION_DENIED, f"client id {client_id} is not one of "
                       "this run's clients")
        elif self.tokens is not None and not self.tokens.check(client_id, token):
            problem = (grpc.StatusCode.UNAUTHENTICATED,
                       f"{'no' if not token else 'a wrong'} token for client {client_id}")
        elif client_id not in self._sessions and len(self._sessions) >= self.limits.max_clients:
            problem = (grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"the server is full ({self.limits.max_clients} clients)")
        if problem is not None:
            log.warning("refused a client from %s: %s", context.peer(), problem[1])
            self.handlers.emit(Event(kind=MessageType.REFUSED, client_id=client_id,
                                     detail={"reason": problem[1]}))
            await context.abort(*problem)
        assert client_id is not None
        return client_id

    async def _hello(self, requests: AsyncIterator[bytes],
                     context: grpc.aio.ServicerContext[bytes, bytes], session: Session) -> None:
        try:
            raw = await asyncio.wait_for(anext(requests), self.limits.idle_timeout)
            hello = pb.ClientFrame.FromString(raw)
            ok = hello.WhichOneof("frame") == "hello" and hello.hello.protocol == PROTOCOL
            detail = f"expected a hello for {PROTOCOL}"
        except (TimeoutError, StopAsyncIteration):
            ok, detail = False, f"no hello within {self.limits.idle_timeout} s"
        except Exception as err:  # a frame that does not even parse
            ok, detail = False, f"malformed hello ({type(err).__name__})"
        if not ok:
            log.warning("client %d (%s): %s", session.client_id, session.peer, detail)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, detail)

    def _register(self, session: Session) -> None:
        with self._lock:
            old = self._sessions.get(session.client_id)
            self._sessions[session.client_id] = session
        if old is not None:
            self._drop(old, "superseded by a new connection of the same client")
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
        self._drop(session, session.close_reason or "disconnected")
        self.inbox.put(Connection(client_id=session.client_id, up=False))
        self.handlers.emit(Event(kind=MessageType.DISCONNECTED, client_id=session.client_id,
                                 detail={"reason": session.close_reason or "disconnected"}))

    def _drop(self, session: Session, reason: str) -> None:
        """Fail the session's open tasks and close it."""
        for task in list(session.tasks.values()):
            self._fail(session, task, "disconnect", reason)
        session.close(reason)

    def _fail(self, session: Session, task: Task, stage: str, message: str) -> None:
        session.tasks.pop(task.task_id, None)
        failure = ClientFailure(round=task.round, client_id=task.client_id, stage=stage,
                                message=message)
        self.inbox.put(Answer(task_id=task.task_id, client_id=task.client_id, failure=failure))
        self.handlers.emit(Event(kind=MessageType.FAILURE, client_id=task.client_id,
                                 round=task.round, task_id=task.task_id,
                                 detail={"stage": stage, "message": message}))

    async def _read(self, requests: AsyncIterator[bytes], session: Session) -> None:
        try:
            while session.close_reason is None:
                timeout = self.limits.idle_timeout if session.assembler.busy else None
                try:
                    raw = await asyncio.wait_for(anext(requests), timeout)
                except StopAsyncIteration:
                    session.assembler.end()
                    break
                self._receive(session, raw)
                if session.assembler.bulk_pending:
                    await self._receive_bulk(session)
        except MessageRejected as rejection:
            self._reject(session, rejection, None)
        except TimeoutError:
            self._drop(session, f"idle for {self.limits.idle_timeout} s in the middle of a "
                                "package")
        except asyncio.CancelledError:
            pass
        except Exception as err:  # the stream broke (reset, oversized gRPC message, ...)
            log.info("client %d: stream ended: %s", session.client_id, err)
        finally:
            session.close(session.close_reason or "disconnected")

    def _receive(self, session: Session, raw: bytes) -> None:
        pending = session.assembler.pending
        pkg: Package | None = None
        try:
            pkg = session.frame(raw)
        except MessageRejected as rejection:
            self._reject(session, rejection, pending or session.assembler.pending)
            return
        if pkg is not None:
            self._take(session, pkg)

    def _take(self, session: Session, pkg: Package) -> None:
        """Match a complete package to its task and pass the answer on."""
        try:
            answer = session.answer(pkg, self.layout, self.schema)
        except MessageRejected as rejection:
            self._reject(session, rejection, pkg.header)
            return
        if answer is not None:
            self._accept(answer)

    def _accept(self, answer: Answer) -> None:
        self.inbox.put(answer)
        kind = (MessageType.FAILURE if answer.failure else MessageType.FIT_REPLY if answer.result
                else MessageType.EVALUATE_REPLY if answer.metrics is not None
                else MessageType.PROPERTIES_REPLY)
        detail: dict[str, object] = {}
        if answer.result is not None:
            detail["num_examples"] = answer.result.num_examples
        if answer.failure is not None:
            detail.update(stage=answer.failure.stage, message=answer.failure.message)
        round_ = (answer.result.round if answer.result else answer.failure.round
                  if answer.failure else None)
        self.handlers.emit(Event(kind=kind, client_id=answer.client_id, round=round_,
                                 task_id=answer.task_id, detail=detail))

    def _reject(self, session: Session, rejection: MessageRejected,
                header: pb.Header | None) -> None:
        log.warning("client %d: %s", session.client_id, rejection)
        self.handlers.emit(Event(kind=MessageType.REJECTED, client_id=session.client_id,
                                 task_id=None if header is None else header.task_id,
                                 detail={"reason": rejection.reason.value,
                                         "detail": rejection.detail}))
        lost = list(session.tasks.values()) if rejection.fatal else [session.task_of(header)]
        for task in lost:
            if task is not None:
                self._fail(session, task, "validate", str(rejection))
        notice = pb.Header(kind=pb.REJECTED, task_id=0 if header is None else header.task_id,
                           reason=str(rejection)[:4000])
        session.outbox.put_nowait([_header_frame(notice)])
        if rejection.fatal:
            self._drop(session, str(rejection))


def exit_frame(reason: str) -> bytes:
    return pb.ServerFrame(header=pb.Header(kind=pb.EXIT, reason=reason)).SerializeToString()
