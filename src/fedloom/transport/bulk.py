"""The bulk connection: large payloads as raw bytes on a TCP (or TLS) socket beside the stream.

gRPC's Python layer copies every message several times (into a ``bytes``, into its own slices,
out again), so a model that streams in chunk frames moves at a fraction of what the socket can
carry. Where the server offers a bulk port, each client opens one more connection to it and
presents the random ticket its (authenticated, encrypted) stream's welcome carried; the server
answers one byte and pairs the socket with that client's session. From then on a package whose
payload is at least :data:`BULK_MIN_BYTES` goes as its header on the stream (saying ``bulk``)
and its tensors' bytes, back to back, on the bulk socket: written straight from the tensors'
memory and read straight into the buffer the tensors are then views of. Headers and payloads are
checked exactly as for chunk frames, before and after the bytes arrive. A client that cannot
reach the bulk port, and any payload below the threshold, uses chunk frames as before.

Example:
    >>> # listener = BulkListener("127.0.0.1", 0, claim=server.claim_bulk).start()
    >>> # sock = connect_bulk("127.0.0.1", listener.port, ticket, tls=None)
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from types import TracebackType

import torch

from fedloom.core.errors import TransportError
from fedloom.transport.security import TlsFiles

log = logging.getLogger(__name__)

TICKET_BYTES = 32
ACCEPTED = b"\x01"
BULK_MIN_BYTES = 1 << 20  # smaller payloads fit a chunk frame or two: not worth the second path
HANDSHAKE_SECONDS = 10.0
MAX_PENDING = 64  # connections still presenting their ticket; more are closed at once
SOCKET_BUFFER = 4 << 20


def split_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` (IPv6 hosts in brackets)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TransportError(f"address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def recv_exact(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock`` (ConnectionError when the peer closes first)."""
    got, size = 0, len(view)
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError(f"the bulk connection closed after {got} of {size} bytes")
        got += n


def send_tensors(sock: socket.socket, tensors: Iterable[torch.Tensor]) -> None:
    """Write the tensors' bytes back to back, from their own memory (no copy when contiguous)."""
    for tensor in tensors:
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        if flat.numel():
            sock.sendall(flat.view(torch.uint8).numpy().data)


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):  # a kernel cap below what we ask for is fine
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


class BulkListener:
    """Accepts bulk connections and hands each one whose ticket ``claim`` accepts to its session.

    Args:
        host, port: where to listen (port 0: any free port, see :attr:`port`).
        claim: ``claim(ticket)``: None when the ticket is no open session's; else a function
            that hands the socket to that session. The listener answers :data:`ACCEPTED` before
            calling it, so no payload can reach the client ahead of that byte.
        tls: the server's certificate and key (and client CA for mutual TLS): the bulk socket is
            wrapped exactly like the stream; None for an insecure server.
    """

    def __init__(self, host: str, port: int, *,
                 claim: Callable[[bytes], Callable[[socket.socket], None] | None],
                 tls: TlsFiles | None = None) -> None:
        self.claim = claim
        self._context = None if tls is None else tls.server_ssl_context()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._sock = socket.create_server((host, port), family=family, backlog=128)
        except OSError as err:
            raise TransportError(f"cannot open the bulk port {host}:{port}: {err}") from None
        self.port: int = self._sock.getsockname()[1]
        self._pending = threading.BoundedSemaphore(MAX_PENDING)
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> BulkListener:
        self._thread = threading.Thread(target=self._accept, name="fedloom-bulk", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> BulkListener:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, peer = self._sock.accept()
            except OSError:
                if self._closed:
                    return
                continue
            if not self._pending.acquire(blocking=False):
                log.warning("bulk port: too many connections presenting tickets; closed %s",
                            peer)
                sock.close()
                continue
            threading.Thread(target=self._admit, args=(sock, peer), daemon=True,
                             name="fedloom-bulk-admit").start()

    def _admit(self, raw: socket.socket, peer: object) -> None:
        sock = raw
        try:
            sock.settimeout(HANDSHAKE_SECONDS)
            if self._context is not None:
                sock = self._context.wrap_socket(raw, server_side=True)
            ticket = bytearray(TICKET_BYTES)
            recv_exact(sock, memoryview(ticket))
            _tune(sock)
            attach = self.claim(bytes(ticket))
            if attach is not None:
                sock.sendall(ACCEPTED)
                attach(sock)
                return
            log.warning("bulk port: %s presented no open session's ticket", peer)
        except (OSError, ssl.SSLError, ConnectionError) as err:
            log.info("bulk port: connection from %s failed: %s", peer, err)
        finally:
            self._pending.release()
        sock.close()


def connect_bulk(host: str, port: int, ticket: bytes, *, tls: TlsFiles | None,
                 timeout: float = HANDSHAKE_SECONDS) -> socket.socket:
    """Open and present the ticket; the socket once the server accepted it (else raises
    TransportError)."""
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        raise TransportError(f"cannot reach the bulk port {host}:{port}: {err}") from None
    sock: socket.socket = raw
    try:
        if tls is not None:
            sock = tls.client_ssl_context().wrap_socket(raw, server_hostname=host)
        _tune(sock)
        sock.sendall(ticket)
        answer = bytearray(1)
        recv_exact(sock, memoryview(answer))
        if bytes(answer) != ACCEPTED:
            raise TransportError("the server refused the bulk ticket")
    except (OSError, ssl.SSLError) as err:
        sock.close()
        raise TransportError(f"bulk port {host}:{port}: {err}") from None
    except TransportError:
        sock.close()
        raise
    return sock
