"""The server's side of the bulk connection (see :mod:`fedloom.transport.bulk`).

:class:`BulkChannel` issues each session a one-time ticket for its welcome, pairs the socket
that presents it with that session, and moves payloads on it from the server's event loop
through a pool of I/O threads (a blocking ``sendall``/``recv_into`` per package, so the loop
never waits on a socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from fedloom.transport.admission import Limits
from fedloom.transport.bulk import TICKET_BYTES, BulkListener, recv_exact, send_tensors
from fedloom.transport.codec import MessageRejected, Package, Rejection
from fedloom.transport.security import TlsFiles
from fedloom.transport.sessions import Session

log = logging.getLogger(__name__)
MAX_IO_THREADS = 256
MAX_PENDING = 64  # bulk handshakes at once (a thread each)


class BulkChannel:
    """Tickets, the listener and the I/O threads of a server's bulk connections.

    Args:
        host, port: where to listen (port 0: any free port, see :attr:`port`).
        tls: the server's credentials (the bulk socket is wrapped like the stream).
        limits: ``idle_timeout`` (seconds a bulk read or write may stall before it fails),
            ``max_clients`` (sessions at once: two I/O threads each, up to
            ``MAX_IO_THREADS``), and the handshake limits of the listener
            (``handshake_timeout``, ``max_pending``, ``max_pending_per_source``).
    """

    def __init__(self, host: str, port: int, *, tls: TlsFiles | None, limits: Limits) -> None:
        self.idle_timeout = limits.idle_timeout
        self._lock = threading.Lock()
        self._tickets: dict[bytes, Session] = {}
        self._listener = BulkListener(
            host, port, claim=self._claim, tls=tls, handshake_timeout=limits.handshake_timeout,
            max_pending=min(limits.max_pending, MAX_PENDING),
            max_per_source=limits.max_pending_per_source, log_burst=limits.log_burst).start()
        self.port = self._listener.port
        self._pool = ThreadPoolExecutor(
            max_workers=min(2 * limits.max_clients, MAX_IO_THREADS) + 2,
            thread_name_prefix="fedloom-bulk-io")

    def close(self) -> None:
        self._listener.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def issue(self, session: Session) -> bytes:
        """A fresh ticket for ``session`` (sent in its welcome; good for one connection)."""
        ticket = secrets.token_bytes(TICKET_BYTES)
        with self._lock:
            self._tickets[ticket] = session
        return ticket

    def release(self, session: Session) -> None:
        """The session ended: forget its ticket, close its bulk socket."""
        with self._lock:
            self._tickets.pop(session.ticket, None)
            sock, session.bulk = session.bulk, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes an I/O thread blocked on it
            sock.close()

    async def send(self, session: Session, tensors: Sequence[torch.Tensor]) -> None:
        """Write a package's payload on the session's bulk socket (OSError when it fails)."""
        sock = session.bulk
        if sock is None:
            raise ConnectionError("the bulk connection is closed")
        await asyncio.get_running_loop().run_in_executor(self._pool, send_tensors, sock,
                                                         tensors)

    async def receive(self, session: Session) -> Package:
        """Read the session's pending bulk payload; the package, checked like any other.

        Raises:
            MessageRejected: the connection closed mid-payload (``truncated``) or the payload
                failed its checks.
            TimeoutError: nothing arrived for ``idle_timeout`` seconds.
        """
        sock = session.bulk
        if sock is None:
            raise MessageRejected(Rejection.UNEXPECTED, "a bulk payload without a bulk "
                                  "connection", fatal=True)
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._pool, recv_exact, sock, session.assembler.payload_view())
        except ConnectionError as err:  # closed or reset mid-payload
            raise MessageRejected(Rejection.TRUNCATED, f"bulk payload: {err}",
                                  fatal=True) from None
        return session.assembler.bulk_done()

    def _claim(self, ticket: bytes) -> Callable[[socket.socket], None] | None:
        """The listener's question (its thread): is this an open session's ticket?"""
        with self._lock:
            session = self._tickets.pop(ticket, None)
        if session is None or session.close_reason is not None:
            return None
        return lambda sock: self._attach(session, sock)

    def _attach(self, session: Session, sock: socket.socket) -> None:
        sock.settimeout(self.idle_timeout)
        with self._lock:
            attached = session.close_reason is None and session.bulk is None
            if attached:
                session.bulk = sock
        if not attached:  # the session ended meanwhile
            sock.close()
            return
        log.info("client %d: bulk connection open", session.client_id)
