"""The client's side of the protocol: connect, receive an instruction, run it, reply, repeat.

:func:`start_client` opens one stream to the server for one client id and loops over the
server's instructions (properties, fit, evaluate, reconnect, exit) until told to exit. When the
connection drops or the server is not up yet it reconnects with exponential backoff (and jitter);
a refused credential, certificate or protocol is final and raises :class:`RefusedError`.

Example:
    >>> # start_client("127.0.0.1:8080", client_id=3, token=TOKEN, client=MyClient(),
    >>> #              tls=TlsFiles(ca="certs/ca.pem"))
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import torch
from google.protobuf.message import DecodeError

from fedloom.core.errors import TransportError
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientConfig
from fedloom.runtime.acting import ActingClient, message_reply
from fedloom.runtime.clients import Client, FitFn, FunctionClient
from fedloom.runtime.reconnect import (
    FINAL_CODES,
    Backoff,
    Refusals,
    RefusedError,
    status_code,
    status_details,
)
from fedloom.transport.bulk import (
    BULK_MIN_BYTES,
    connect_bulk,
    recv_exact,
    send_tensors,
    split_address,
)
from fedloom.transport.channel import METHOD, grpc_options
from fedloom.transport.codec import (
    DEFAULT_CHUNK_BYTES,
    PROTOCOL,
    Assembler,
    MessageRejected,
    Package,
    Rejection,
    describe,
    fast_chunk,
    itemsize,
    stream,
)
from fedloom.transport.generated import fedloom_pb2 as pb
from fedloom.transport.handlers import Event, Handlers, MessageType
from fedloom.transport.messages import (
    PARAMS,
    config_from_proto,
    downlink_from_package,
    failure_header,
    layout_from_proto,
    metrics_header,
    result_to_package,
    values_from_proto,
    values_to_proto,
)
from fedloom.transport.security import CLIENT_ID_KEY, TOKEN_KEY, TlsFiles

__all__ = ["Backoff", "ClientLoop", "RefusedError", "start_client"]

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 << 20
BULK_TIMEOUT = 300.0  # seconds a bulk read or write may stall before the connection counts as lost


def _header_frame(header: pb.Header) -> bytes:
    return pb.ClientFrame(header=header).SerializeToString()


@dataclass(frozen=True, slots=True)
class _BulkReply:
    """A reply whose header goes on the stream and whose payload on the bulk connection."""

    header_frame: bytes
    tensors: tuple[torch.Tensor, ...]


@dataclass(slots=True)
class _Stop:
    """How a stream ended: the server said exit, or reconnect after ``seconds``."""

    exit_reason: str | None = None
    seconds: float = 0.0


class ClientLoop:
    """One client id's connection loop (see :func:`start_client`)."""

    def __init__(self, address: str, *, client_id: int, client: Client | FitFn,
                 token: str | None = None, tls: TlsFiles | None = None, insecure: bool = False,
                 backoff: Backoff | None = None, handlers: Handlers | None = None,
                 bulk: bool = True) -> None:
        if tls is None and not insecure:
            raise TransportError("refusing to connect without TLS: give the CA certificate "
                                 "(--root-cert), or insecure=True (--insecure) for a loopback "
                                 "demo")
        self.address = address
        self.client_id = client_id
        self.handlers = handlers or Handlers()
        self.client = ActingClient(client if isinstance(client, Client)
                                   else FunctionClient(client), self.handlers)
        meta: list[tuple[str, str | bytes]] = [(CLIENT_ID_KEY, str(client_id))]
        if token:
            meta.append((TOKEN_KEY, f"Bearer {token}"))
        self.metadata = tuple(meta)
        self.tls = tls
        self.backoff = backoff or Backoff()
        self.layout: ParamLayout | None = None
        self._stopped = threading.Event()
        self._call: Any = None
        self._chunk_bytes = DEFAULT_CHUNK_BYTES
        self._refusals = Refusals(client_id, address, tls=tls is not None)
        self.use_bulk = bulk
        self._bulk: socket.socket | None = None

    def run(self) -> str:
        """Serve until the server says exit (returns its reason) or :meth:`stop` is called."""
        attempt, since = 0, time.monotonic()
        while not self._stopped.is_set():
            connected = False
            try:
                stop = self._session()
                connected = True
                if stop.exit_reason is not None:
                    return stop.exit_reason
                attempt, since = 0, time.monotonic() + stop.seconds
                self._stopped.wait(stop.seconds)
                continue
            except _Connected as c:  # the stream broke after a welcome: start over
                if self._stopped.is_set():
                    break
                connected = True
                log.warning("client %d: connection lost (%s); reconnecting", self.client_id,
                            c.reason)
            except grpc.RpcError as err:
                if self._stopped.is_set():
                    break
                self._refusals.check(err)
                log.info("client %d: cannot reach %s (%s)", self.client_id, self.address,
                         status_code(err))
            if connected:
                attempt, since = 0, time.monotonic()
            give_up = self.backoff.give_up_after
            if give_up is not None and time.monotonic() - since > give_up:
                raise TransportError(f"client {self.client_id}: no connection to "
                                     f"{self.address} for {give_up:g} s; giving up")
            self._stopped.wait(self.backoff.delay(attempt))
            attempt += 1
        return "stopped"

    def stop(self) -> None:
        """End the connection loop from another thread."""
        self._stopped.set()
        call = self._call
        if call is not None:
            call.cancel()

    def _channel(self) -> grpc.Channel:
        options = [*grpc_options(MAX_MESSAGE_BYTES, keepalive_ms=20_000),
                   ("grpc.enable_retries", 0)]
        if self.tls is None:
            return grpc.insecure_channel(self.address, options=options)
        return grpc.secure_channel(self.address, self.tls.channel_credentials(), options=options)

    def _session(self) -> _Stop:
        outgoing: queue.Queue[Iterable[bytes] | None] = queue.Queue()
        outgoing.put([pb.ClientFrame(hello=pb.Hello(protocol=PROTOCOL)).SerializeToString()])

        def requests() -> Iterator[bytes]:
            while (frames := outgoing.get()) is not None:
                yield from frames

        channel = self._channel()
        welcomed = False
        try:
            join: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(METHOD)
            call = join(requests(), metadata=self.metadata)
            self._call = call
            if self._stopped.is_set():  # stop() came before there was a call to cancel
                call.cancel()
            assembler: Assembler | None = None
            for raw in call:
                chunk = fast_chunk(raw) if assembler is not None else None
                if chunk is not None:  # the common frame, read in place
                    assert assembler is not None
                    pkg = assembler.data(*chunk)
                    if pkg is not None and (stop := self._package(pkg, outgoing)) is not None:
                        return stop
                    continue
                frame = pb.ServerFrame.FromString(raw)
                which = frame.WhichOneof("frame")
                if which == "welcome":
                    assembler = self._welcome(frame.welcome)
                    welcomed = True
                    continue
                if assembler is None:
                    raise TransportError("the server sent an instruction before its welcome")
                stop = self._frame(frame, which, assembler, outgoing)
                if stop is not None:
                    return stop
            raise _Connected("the server ended the stream without saying exit")
        except grpc.RpcError as err:
            if welcomed and status_code(err) not in FINAL_CODES:
                raise _Connected(f"{status_code(err)}: {status_details(err)}") from None
            raise
        except (MessageRejected, DecodeError) as err:  # the server broke the protocol
            raise _Connected(f"bad message from the server: {err}") from None
        except OSError as err:  # the bulk connection broke
            raise _Connected(f"bulk connection: {err}") from None
        finally:
            outgoing.put(None)
            self._call = None
            self._close_bulk()
            channel.close()

    def _welcome(self, welcome: pb.Welcome) -> Assembler:
        if welcome.protocol != PROTOCOL:
            raise RefusedError(f"the server speaks {welcome.protocol!r}, this client {PROTOCOL}")
        try:
            self.layout = layout_from_proto(welcome.layout)
        except MessageRejected as err:
            raise RefusedError(f"the server's model layout is not valid: {err}") from None
        self.client.on_welcome(self.layout, welcome.run_config)
        log.info("client %d: connected to %s (%s mode)", self.client_id, self.address,
                 welcome.mode)
        self.handlers.emit(Event(kind=MessageType.WELCOME, client_id=self.client_id,
                                 detail={"mode": welcome.mode}))
        self._chunk_bytes = max(1, min(int(welcome.max_chunk_bytes), DEFAULT_CHUNK_BYTES))
        self._close_bulk()
        if welcome.bulk_port and self.use_bulk:
            try:  # (an address that is not HOST:PORT, e.g. a gRPC target URI, has no host here)
                host = split_address(self.address)[0]
                self._bulk = connect_bulk(host, welcome.bulk_port, welcome.bulk_ticket,
                                          tls=self.tls)
                self._bulk.settimeout(BULK_TIMEOUT)
            except TransportError as err:
                log.info("client %d: no bulk connection, payloads stream in chunks (%s)",
                         self.client_id, err)
        size = 4 * self.layout.size * itemsize(self.layout.dtype) + (1 << 20)
        return Assembler(max_payload_bytes=size, max_chunk_bytes=max(int(welcome.max_chunk_bytes),
                                                                     1))

    def _frame(self, frame: pb.ServerFrame, which: str | None, assembler: Assembler,
               outgoing: queue.Queue[Iterable[bytes] | None]) -> _Stop | None:
        if which == "header":
            pkg = assembler.header(frame.header)
            if assembler.bulk_pending:
                if self._bulk is None:
                    raise MessageRejected(Rejection.UNEXPECTED, "the server sent a bulk payload, "
                                          "but this client has no bulk connection", fatal=True)
                recv_exact(self._bulk, assembler.payload_view())
                pkg = assembler.bulk_done()
        elif which == "chunk":
            pkg = assembler.chunk(frame.chunk)
        else:
            raise TransportError(f"unexpected {which or 'empty'} frame from the server")
        return None if pkg is None else self._package(pkg, outgoing)

    def _package(self, pkg: Package, outgoing: queue.Queue[Iterable[bytes] | None]
                 ) -> _Stop | None:
        """Act on a complete package from the server."""
        h = pkg.header
        if h.kind == pb.EXIT:
            self._emit(MessageType.EXIT, h, reason=h.reason)
            return _Stop(exit_reason=h.reason or "the server said exit")
        if h.kind == pb.RECONNECT:
            self._emit(MessageType.RECONNECT, h, seconds=h.seconds)
            return _Stop(seconds=max(0.0, min(h.seconds, 3600.0)))
        if h.kind == pb.REJECTED:
            log.warning("client %d: the server rejected task %d: %s", self.client_id,
                        h.task_id, h.reason)
            self._emit(MessageType.REJECTED, h, reason=h.reason)
            return None
        reply = self._reply(pkg)
        if isinstance(reply, _BulkReply):
            assert self._bulk is not None
            outgoing.put([reply.header_frame])
            send_tensors(self._bulk, reply.tensors)
        else:
            outgoing.put(reply)  # frames made as gRPC sends them
        return None

    def _close_bulk(self) -> None:
        sock, self._bulk = self._bulk, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _emit(self, kind: MessageType, h: pb.Header, **detail: object) -> None:
        self.handlers.emit(Event(kind=kind, client_id=self.client_id, round=h.round,
                                 task_id=h.task_id, detail=detail))

    def _reply(self, pkg: Package) -> Iterable[bytes] | _BulkReply:
        """Run one instruction; its reply frames (a FAILURE when it could not be run)."""
        h, layout = pkg.header, self.layout
        assert layout is not None
        kind = {pb.FIT: MessageType.FIT, pb.EVALUATE: MessageType.EVALUATE,
                pb.PROPERTIES: MessageType.PROPERTIES,
                pb.MESSAGE: MessageType.MESSAGE}.get(h.kind)
        try:
            if kind is None:
                raise TransportError(f"cannot run a {pb.Kind.Name(h.kind)} instruction")
            if h.kind == pb.MESSAGE:
                self._emit(kind, h, msg_type=h.msg_type)
                return self._answer_message(pkg)
            self._emit(kind, h)
            if h.kind == pb.FIT:
                result = self.client.run_fit(downlink_from_package(pkg, layout), layout)
                header, tensors = result_to_package(h.task_id, result)
                self._emit(MessageType.FIT_REPLY, h, num_examples=result.num_examples)
                payload = sum(t.numel() * t.element_size() for t in tensors.values())
                if self._bulk is not None and payload >= BULK_MIN_BYTES:
                    header.bulk = True
                    return _BulkReply(describe(header, tensors, _header_frame),
                                      tuple(tensors.values()))
                return stream(header, tensors, wrap_header=_header_frame,
                              chunk_bytes=self._chunk_bytes)
            if h.kind == pb.EVALUATE:
                metrics, n = self._evaluate(pkg, layout)
                self._emit(MessageType.EVALUATE_REPLY, h, num_examples=n)
                return [_header_frame(metrics_header(h.task_id, pb.EVALUATE_REPLY, round=h.round,
                                                     client_id=h.client_id, metrics=metrics,
                                                     num_examples=n))]
            values = self.client.get_properties(values_from_proto(h.values))
            reply = pb.Header(task_id=h.task_id, kind=pb.PROPERTIES_REPLY, round=h.round,
                              client_id=h.client_id)
            values_to_proto(values, reply.values)
            return [_header_frame(reply)]
        except Exception as err:  # a failed task is a reply, not the end of the client
            log.warning("client %d: task %d failed: %s: %s", self.client_id, h.task_id,
                        type(err).__name__, err)
            self._emit(MessageType.FAILURE, h, message=str(err))
            return [_header_frame(failure_header(h.task_id, round=h.round, client_id=h.client_id,
                                                 message=f"{type(err).__name__}: {err}"))]

    def _answer_message(self, pkg: Package) -> Iterable[bytes]:
        """A user message type, answered by its acting handler."""
        assert self.layout is not None
        header, tensors = message_reply(self.handlers, self.client, pkg, self.client_id,
                                        self.layout)
        self._emit(MessageType.MESSAGE_REPLY, pkg.header, msg_type=header.msg_type)
        return stream(header, tensors, wrap_header=_header_frame, chunk_bytes=self._chunk_bytes)

    def _evaluate(self, pkg: Package, layout: ParamLayout) -> tuple[Any, int]:
        params = pkg.tensors.get(PARAMS)
        if params is None or tuple(params.shape) != (layout.size,):
            raise TransportError("evaluate instruction without a model of the layout's size")
        h = pkg.header
        config = config_from_proto(h.config) if h.HasField("config") else ClientConfig()
        return self.client.run_evaluate(params, config, layout, round=h.round,
                                        client_id=h.client_id)


class _Connected(Exception):
    """The stream broke after the server had welcomed this client (reconnect at once)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def start_client(address: str, *, client_id: int, client: Client | FitFn,
                 token: str | None = None, tls: TlsFiles | None = None, insecure: bool = False,
                 backoff: Backoff | None = None, handlers: Handlers | None = None,
                 bulk: bool = True) -> str:
    """Serve the server at ``address`` as ``client_id`` until it says exit; returns its reason.

    Args:
        client: a :class:`Client` (Flower- or FedLab-style) or a plain Flower-style fit function.
        token: this client's token (the server's ``--tokens`` file holds its hash).
        tls: the CA that signed the server's certificate (and this client's own certificate
            and key under mutual TLS); None only with ``insecure``.
        bulk: open the server's bulk connection for large payloads when it offers one.

    Raises:
        RefusedError: the server refused the credentials, the certificate or the protocol.
        TransportError: no connection for ``backoff.give_up_after`` seconds.
    """
    return ClientLoop(address, client_id=client_id, client=client, token=token, tls=tls,
                        insecure=insecure, backoff=backoff, handlers=handlers, bulk=bulk).run()
