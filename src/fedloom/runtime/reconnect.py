"""When a client reconnects and when it must not: backoff delays and final refusals.

A dropped connection or a server that is not up yet is retried with exponential backoff (and
jitter); a refused credential, client id, protocol or certificate is final
(:class:`RefusedError`): retrying cannot help.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from fedloom.core.errors import TransportError

FINAL_CODES = {grpc.StatusCode.UNAUTHENTICATED: "refused the credentials",
               grpc.StatusCode.PERMISSION_DENIED: "refused the client id",
               grpc.StatusCode.FAILED_PRECONDITION: "refused the protocol"}
TLS_WORDS = ("ssl", "tls", "handshake", "certificate")
CLOSED_IN_HANDSHAKE = 3  # "socket closed" while connecting over TLS this often in a row: refused

class RefusedError(TransportError):
    """The server refused this client (credentials, certificate or protocol): do not retry."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Reconnection delays: ``initial * factor**k`` capped at ``maximum``, each +-``jitter``;
    the client gives up after ``give_up_after`` seconds without a connection (None: never)."""

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.2
    give_up_after: float | None = 300.0

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 60))
        return base * (1 + self.jitter * (2 * random.random() - 1))


class Refusals:
    """Tells a refusal (final) from a failure to connect (retried) for one client id."""

    def __init__(self, client_id: int, address: str, *, tls: bool) -> None:
        self.client_id, self.address, self.tls = client_id, address, tls
        self.closed_in_handshake = 0

    def check(self, err: grpc.RpcError) -> None:
        """Raise RefusedError when retrying cannot help."""
        code, details = status_code(err), status_details(err)
        if code in FINAL_CODES:
            raise RefusedError(f"client {self.client_id}: the server {FINAL_CODES[code]}: "
                               f"{details}") from None
        if code == grpc.StatusCode.UNAVAILABLE and any(w in details.lower() for w in TLS_WORDS):
            raise RefusedError(f"client {self.client_id}: TLS handshake with {self.address} "
                               f"failed (check --root-cert, --cert and --key): {details}"
                               ) from None
        if self.tls and code == grpc.StatusCode.UNAVAILABLE and "socket closed" in details.lower():
            self.closed_in_handshake += 1
            if self.closed_in_handshake >= CLOSED_IN_HANDSHAKE:
                raise RefusedError(
                    f"client {self.client_id}: {self.address} closed the connection during the "
                    f"TLS handshake {self.closed_in_handshake} times: it refuses this client's "
                    "certificate (check --cert and --key, and that the server's --client-ca "
                    "signed them)") from None
        else:
            self.closed_in_handshake = 0


def status_code(err: grpc.RpcError) -> grpc.StatusCode | None:
    code: Callable[[], grpc.StatusCode] | None = getattr(err, "code", None)
    return code() if code is not None else None


def status_details(err: grpc.RpcError) -> str:
    details: Callable[[], str | None] | None = getattr(err, "details", None)
    return (details() if details is not None else None) or str(err)
