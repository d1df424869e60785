"""Who may open a stream: the server's limits, the caller's credentials, its hello.

Everything here happens before a client may send a package: a caller without a valid id or
token, one whose client certificate names another client, one the full server has no room for,
one that broke the protocol too often lately, and one from a source address with too many
streams still waiting for their hello are refused with a gRPC status and a (rate-limited) log
line; a stream whose first frame, within ``handshake_timeout``, is not a hello in this protocol
is closed. :func:`server_options` turns the same limits into gRPC's own: connections at once, a
deadline on TLS/HTTP2 handshakes, idle connections closed, keepalive pings enforced, streams per
connection bounded.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import resource
from collections import Counter
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from dataclasses import dataclass, fields

import grpc

from fedloom.core.errors import ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.transport.codec import DEFAULT_CHUNK_BYTES, PROTOCOL, itemsize
from fedloom.transport.conduct import Conduct, Throttle, clean, held_back
from fedloom.transport.generated import fedloom_pb2 as pb
from fedloom.transport.handlers import Event, Handlers, MessageType
from fedloom.transport.security import CLIENT_ID_KEY, TOKEN_KEY, TokenBook
from fedloom.transport.sessions import Session

log = logging.getLogger(__name__)

FD_RESERVE = 64  # descriptors kept for grpc's own, the run directory's files and imports
CERT_ID = re.compile(r"client-(\d{1,15})")  # how `fedloom certs` names a client (CN, SAN)


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What the server accepts.

    Attributes:
        max_clients: clients connected at once; more are refused (RESOURCE_EXHAUSTED).
        max_update_bytes: the largest reply payload per task (None: four model sizes + 1 MiB,
            room for the model and the extras of every algorithm here).
        chunk_bytes: the chunk size the server sends and the largest it accepts.
        idle_timeout: seconds a client may stay silent in the middle of a package before its
            stream is closed.
        handshake_timeout: seconds for a connection's whole TLS/HTTP2 handshake, for a stream's
            hello, and for the whole ticket handshake on the bulk port.
        max_pending: streams (and bulk connections) at once that have not finished their
            handshake; more are refused.
        max_pending_per_source: the same, per source address.
        max_connections: TCP connections at once on the gRPC port; more are closed as they
            are accepted (None: ``max_clients + max_pending``, at most half of ``ulimit -n``).
        connection_idle: seconds a connection without a stream is kept open.
        max_streams: streams at once on one connection (a client needs one; a process serving
            several client ids shares one connection among them).
        min_transfer_rate: bytes per second a package must average: a package of P bytes is
            dropped (``too_slow``) unless it is complete ``transfer_grace + P /
            min_transfer_rate`` seconds after its header (0: no deadline).
        transfer_grace: seconds every package gets on top of its size's share.
        max_violations: rejected messages a client may send per ``violation_window``; the next
            one ends its stream and it is refused until the window ends (0: no limit).
        violation_window: seconds.
        log_burst: log lines per client and reason (or per source address) per
            ``violation_window`` about its
            rejections and refusals; the rest are counted in the next line that is written.
    """

    max_clients: int = 1000
    max_update_bytes: int | None = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    idle_timeout: float = 60.0
    handshake_timeout: float = 10.0
    max_pending: int = 256
    max_pending_per_source: int = 32
    max_connections: int | None = None
    connection_idle: float = 60.0
    max_streams: int = 256
    min_transfer_rate: float = 64 * 1024
    transfer_grace: float = 10.0
    max_violations: int = 50
    violation_window: float = 60.0
    log_burst: int = 5

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or value is None:
                continue
            zero_ok = f.name in ("min_transfer_rate", "max_violations", "transfer_grace")
            if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
                problems.append(f"limits.{f.name} = {value!r}: must be "
                                f"{'>= 0' if zero_ok else '> 0'}")
        if problems:
            raise ConfigError(problems)

    def update_bytes(self, layout: ParamLayout) -> int:
        if self.max_update_bytes is not None:
            return self.max_update_bytes
        return 4 * layout.size * itemsize(layout.dtype) + (1 << 20)

    @property
    def connections(self) -> int:
        """TCP connections at once on the gRPC port: ``max_connections``, or else
        ``max_clients + max_pending`` but at most half the file descriptors this process may
        open (the other half: bulk connections, the checkpoint, logs)."""
        if self.max_connections is not None:
            return self.max_connections
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        budget = self.max_clients + self.max_pending
        if soft == resource.RLIM_INFINITY:
            return budget
        return max(min(budget, (soft - FD_RESERVE) // 2), 16)

    def package_seconds(self, payload_bytes: int) -> float:
        """How long a package of ``payload_bytes`` may take from its header to its last byte
        (inf: no deadline)."""
        if self.min_transfer_rate <= 0:
            return math.inf
        return self.transfer_grace + payload_bytes / self.min_transfer_rate


def server_options(limits: Limits) -> list[tuple[str, int]]:
    """gRPC server arguments for ``limits``: what a connection that never authenticates may
    cost (a handshake deadline, idle connections closed, a cap on connections at once) and
    keepalive enforcement (pings more often than every 5 s without data count as strikes; the
    second strike closes the connection)."""
    return [("grpc.max_allowed_incoming_connections", limits.connections),
            ("grpc.server_handshake_timeout_ms", int(limits.handshake_timeout * 1000)),
            ("grpc.max_connection_idle_ms", int(limits.connection_idle * 1000)),
            ("grpc.max_concurrent_streams", limits.max_streams),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.keepalive_permit_without_calls", 1)]


def source_of(peer: str) -> str:
    """The address part of a gRPC peer (``ipv4:10.0.0.1:5000`` -> ``10.0.0.1``)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0].strip("[]") or rest
    return peer


def certificate_ids(auth: Mapping[str, Iterable[bytes]]) -> set[int] | None:
    """The client ids a verified client certificate names (its subject CN and SAN entries of
    the form ``client-K``); None without a client certificate."""
    names = [*auth.get("x509_common_name", ()), *auth.get("x509_subject_alternative_name", ())]
    if not names and not auth.get("x509_pem_cert"):
        return None
    return {int(m.group(1)) for n in names
            if (m := CERT_ID.fullmatch(n.decode("utf-8", errors="replace")))}


class Admission:
    """The checks before a stream is served, with what they remember between calls."""

    def __init__(self, *, limits: Limits, client_ids: Collection[int] | None,
                 tokens: TokenBook | None, handlers: Handlers, conduct: Conduct) -> None:
        self.limits, self.client_ids, self.tokens = limits, client_ids, tokens
        self.handlers, self.conduct = handlers, conduct
        self.pending: Counter[str] = Counter()  # source address -> streams before their hello
        self.throttle = Throttle(burst=limits.log_burst, window=limits.violation_window)

    def enter(self, source: str) -> str | None:
        """Take a pending slot for ``source``; the reason when there is none."""
        if sum(self.pending.values()) >= self.limits.max_pending:
            return f"{self.limits.max_pending} streams are already waiting for their hello"
        if self.pending[source] >= self.limits.max_pending_per_source:
            return (f"{self.limits.max_pending_per_source} streams from {source} are already "
                    "waiting for their hello")
        self.pending[source] += 1
        return None

    def leave(self, source: str) -> None:
        self.pending[source] -= 1
        if self.pending[source] <= 0:
            del self.pending[source]

    async def refuse(self, context: grpc.aio.ServicerContext[bytes, bytes],
                     code: grpc.StatusCode, reason: str, client_id: int | None) -> None:
        """Log (rate-limited per source), tell the handlers, abort the call."""
        source = source_of(context.peer())
        ok, held = self.throttle.allow(("refused", source))
        if ok:
            log.warning("refused a client from %s: %s%s", clean(context.peer()), reason,
                        held_back(held))
        self.handlers.emit(Event(kind=MessageType.REFUSED, client_id=client_id,
                                 detail={"reason": reason}))
        await context.abort(code, reason)

    async def authenticate(self, context: grpc.aio.ServicerContext[bytes, bytes], *,
                           connected: Collection[int]) -> int:
        """The caller's client id, or the call aborted (a missing or unknown id, a wrong token,
        a certificate for another client, a full server) before it can send anything."""
        meta = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        raw_id = meta.get(CLIENT_ID_KEY, "")
        token = meta.get(TOKEN_KEY, "").removeprefix("Bearer ")
        client_id = int(raw_id) if raw_id.isascii() and raw_id.isdigit() and len(raw_id) < 16 \
            else None
        problem = None
        certified = certificate_ids(context.auth_context())
        if client_id is None:
            problem = (grpc.StatusCode.UNAUTHENTICATED, "no client id in the call metadata")
        elif self.client_ids is not None and client_id not in self.client_ids:
            problem = (grpc.StatusCode.PERMISSION_DENIED, f"client id {client_id} is not one "
                       "of this run's clients")
        elif certified and client_id not in certified:
            problem = (grpc.StatusCode.PERMISSION_DENIED, f"the client certificate is for "
                       f"client {', '.join(map(str, sorted(certified)))}, not client "
                       f"{client_id}")
        elif certified == set() and self.tokens is None:
            problem = (grpc.StatusCode.PERMISSION_DENIED, "the client certificate names no "
                       "client id (subject CN or SAN 'client-K') and there are no tokens to "
                       "tell who it is")
        elif self.tokens is not None and not self.tokens.check(client_id, token):
            problem = (grpc.StatusCode.UNAUTHENTICATED,
                       f"{'no' if not token else 'a wrong'} token for client {client_id}")
        elif self.conduct.over(client_id):
            problem = (grpc.StatusCode.UNAVAILABLE, f"client {client_id} broke the protocol "
                       f"more than {self.limits.max_violations} times in "
                       f"{self.limits.violation_window:g} s; try again later")
        elif client_id not in connected and len(connected) >= self.limits.max_clients:
            problem = (grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"the server is full ({self.limits.max_clients} clients)")
        if problem is not None:
            await self.refuse(context, *problem, client_id)
        assert client_id is not None
        return client_id


async def expect_hello(requests: AsyncIterator[bytes],
                       context: grpc.aio.ServicerContext[bytes, bytes], session: Session,
                       timeout: float) -> None:
    """Abort the call unless its first frame, within ``timeout``, is a hello in this
    protocol."""
    try:
        raw = await asyncio.wait_for(anext(requests), timeout)
        hello = pb.ClientFrame.FromString(raw)
        ok = hello.WhichOneof("frame") == "hello" and hello.hello.protocol == PROTOCOL
        detail = f"expected a hello for {PROTOCOL}"
    except (TimeoutError, StopAsyncIteration):
        ok, detail = False, f"no hello within {timeout:g} s"
    except Exception as err:  # a frame that does not even parse
        ok, detail = False, f"malformed hello ({type(err).__name__})"
    if not ok:
        log.warning("client %d (%s): %s", session.client_id, clean(session.peer), detail)
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, detail)
