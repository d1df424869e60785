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
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType

import torch

from fedloom.core.errors import TransportError
from fedloom.transport.conduct import Throttle, clean, held_back
from fedloom.transport.security import TlsFiles

log = logging.getLogger(__name__)

TICKET_BYTES = 32
ACCEPTED = b"\x01"
BULK_MIN_BYTES = 1 << 20  # smaller payloads fit a chunk frame or two: not worth the second path
HANDSHAKE_SECONDS = 10.0
MAX_PENDING = 64  # connections still presenting their ticket; more are closed at once
REAP_SECONDS = 0.25  # how often the listener looks for handshakes past their deadline
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


@dataclass(slots=True, kw_only=True)
class _Pending:
    """A connection presenting its ticket: until when, from where, on which socket object (the
    TLS wrapper once there is one: the raw socket is detached from its descriptor then)."""

    deadline: float
    source: str
    live: socket.socket
    reaped: bool = False


class BulkListener:
    """Accepts bulk connections and hands each one whose ticket ``claim`` accepts to its session.

    A connection must present its ticket (after its TLS handshake) within ``handshake_timeout``
    seconds of being accepted, however slowly its bytes drip in: past that deadline it is shut
    down. At most ``max_pending`` connections, ``max_per_source`` of them from one address, may
    be presenting tickets at once; more are closed at accept. Refusals and failed handshakes are
    logged, at most ``log_burst`` lines per address and minute.

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
                 tls: TlsFiles | None = None, handshake_timeout: float = HANDSHAKE_SECONDS,
                 max_pending: int = MAX_PENDING, max_per_source: int = MAX_PENDING,
                 log_burst: int = 5) -> None:
        self.claim = claim
        self.handshake_timeout = handshake_timeout
        self.max_pending, self.max_per_source = max_pending, max_per_source
        self._context = None if tls is None else tls.server_ssl_context()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._sock = socket.create_server((host, port), family=family, backlog=128)
        except OSError as err:
            raise TransportError(f"cannot open the bulk port {host}:{port}: {err}") from None
        self.port: int = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._pending: dict[socket.socket, _Pending] = {}  # accepted socket -> its handshake
        self._sources: Counter[str] = Counter()
        self._throttle = Throttle(burst=log_burst, window=60.0)
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

    def pending(self) -> int:
        """Connections presenting their ticket now."""
        with self._lock:
            return len(self._pending)

    def _note(self, source: str, message: str, *args: object, level: int = logging.WARNING
              ) -> None:
        """Log, at most ``log_burst`` lines per source and kind of message a minute."""
        passed, held = self._throttle.allow((source, message))
        if passed:
            log.log(level, "bulk port: " + message + "%s", *args, held_back(held))

    def _accept(self) -> None:
        self._sock.settimeout(REAP_SECONDS)
        while not self._closed:
            self._reap()
            try:
                sock, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:  # closed, or out of file descriptors for a moment
                if self._closed:
                    return
                time.sleep(REAP_SECONDS)
                continue
            source = str(peer[0])
            with self._lock:
                full = (len(self._pending) >= self.max_pending
                        or self._sources[source] >= self.max_per_source)
                if not full:
                    self._pending[sock] = _Pending(
                        deadline=time.monotonic() + self.handshake_timeout, source=source,
                        live=sock)
                    self._sources[source] += 1
            if full:
                self._note(source, "too many connections presenting tickets; closed one from "
                           "%s", clean(peer))
                sock.close()
                continue
            threading.Thread(target=self._admit, args=(sock, peer), daemon=True,
                             name="fedloom-bulk-admit").start()

    def _reap(self) -> None:
        """Shut down every connection past its handshake deadline (its thread then fails)."""
        now = time.monotonic()
        with self._lock:  # under the lock: _done pops an entry before its socket is closed
            late = [p for p in self._pending.values() if p.deadline < now and not p.reaped]
            for entry in late:
                entry.reaped = True
                with contextlib.suppress(OSError):
                    entry.live.shutdown(socket.SHUT_RDWR)
        for entry in late:
            self._note(entry.source, "%s did not present a ticket within %g s; closed",
                       entry.source, self.handshake_timeout)

    def _done(self, raw: socket.socket) -> bool:
        """The handshake is over: free its slot; False when the reaper got there first."""
        with self._lock:
            entry = self._pending.pop(raw, None)
            if entry is not None:
                self._sources[entry.source] -= 1
                if self._sources[entry.source] <= 0:
                    del self._sources[entry.source]
        return entry is not None and not entry.reaped and entry.deadline >= time.monotonic()

    def _admit(self, raw: socket.socket, peer: object) -> None:
        sock, attach = raw, None
        source = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        try:
            sock, attach = self._handshake(raw, peer)
        except (OSError, ssl.SSLError, ConnectionError) as err:
            self._note(source, "connection from %s failed: %s", clean(peer), clean(err),
                       level=logging.INFO)
        in_time = self._done(raw)
        try:
            if attach is not None and in_time:
                sock.sendall(ACCEPTED)
                attach(sock)
                return
        except OSError as err:
            self._note(source, "connection from %s failed: %s", clean(peer), clean(err),
                       level=logging.INFO)
        sock.close()

    def _handshake(self, raw: socket.socket, peer: object
                   ) -> tuple[socket.socket, Callable[[socket.socket], None] | None]:
        """TLS (when set up) and the ticket: the socket, and how to attach it (None: no open
        session's ticket)."""
        source = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        raw.settimeout(self.handshake_timeout)
        sock = raw
        if self._context is not None:
            try:
                sock = self._context.wrap_socket(raw, server_side=True,
                                                 do_handshake_on_connect=False)
                with self._lock:  # the reaper must shut down the socket the handshake reads
                    entry = self._pending.get(raw)
                    if entry is not None:
                        entry.live = sock
                sock.do_handshake()
            except (ssl.SSLError, OSError) as err:
                self._note(source, "TLS handshake with %s failed: %s", clean(peer), clean(err))
                return sock, None
        ticket = bytearray(TICKET_BYTES)
        recv_exact(sock, memoryview(ticket))
        _tune(sock)
        attach = self.claim(bytes(ticket))
        if attach is None:
            self._note(source, "%s presented no open session's ticket", clean(peer))
        return sock, attach


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
