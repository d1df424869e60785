"""TLS credentials and per-client tokens.

The server holds tokens only as salted SHA-256 digests: :class:`TokenBook` reads a tokens file
(one ``CLIENT_ID TOKEN`` pair per line, ``#`` comments) and keeps nothing else. A client sends its
id and token in the call metadata (encrypted by TLS), so an unknown or wrong credential is refused
before the server reads a single message. Tokens never reach a log line or a ``repr``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedloom.core.errors import ConfigError

CLIENT_ID_KEY = "x-fedloom-client-id"
TOKEN_KEY = "authorization"
MIN_TOKEN_CHARS = 16


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"{what} {str(path)!r}: cannot read it ({err.strerror})") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """PEM files of one side. The server needs ``cert`` and ``key`` (and ``ca`` to require
    client certificates: mutual TLS); a client needs ``ca`` (the root that signed the server)
    and, under mutual TLS, its own ``cert`` and ``key``."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None

    def server_credentials(self) -> grpc.ServerCredentials:
        if self.cert is None or self.key is None:
            raise ConfigError("the server needs --cert and --key for TLS (or --insecure for a "
                              "loopback demo)")
        pair = (_read(self.key, "--key"), _read(self.cert, "--cert"))
        if self.ca is None:
            return grpc.ssl_server_credentials([pair])
        return grpc.ssl_server_credentials([pair], root_certificates=_read(self.ca, "--client-ca"),
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        if self.ca is None:
            raise ConfigError("the client needs --root-cert (the CA that signed the server's "
                              "certificate) for TLS (or --insecure for a loopback demo)")
        if (self.cert is None) != (self.key is None):
            raise ConfigError("mutual TLS needs both --cert and --key")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "--root-cert"),
            private_key=None if self.key is None else _read(self.key, "--key"),
            certificate_chain=None if self.cert is None else _read(self.cert, "--cert"))


    def server_ssl_context(self) -> ssl.SSLContext:
        """The same credentials for a plain socket (the bulk connection)."""
        if self.cert is None or self.key is None:
            raise ConfigError("the server needs --cert and --key for TLS")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_chain(context, self.cert, self.key)
        if self.ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            _load_ca(context, self.ca, "--client-ca")
        return context

    def client_ssl_context(self) -> ssl.SSLContext:
        """The client's credentials for a plain socket (the bulk connection)."""
        if self.ca is None:
            raise ConfigError("the client needs --root-cert (the CA that signed the server's "
                              "certificate) for TLS")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_ca(context, self.ca, "--root-cert")
        if self.cert is not None and self.key is not None:
            _load_chain(context, self.cert, self.key)
        return context


def _load_chain(context: ssl.SSLContext, cert: str, key: str) -> None:
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"certificate {cert!r} with key {key!r}: {err}") from None


def _load_ca(context: ssl.SSLContext, ca: str, what: str) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"{what} {ca!r}: {err}") from None


def _digest(salt: bytes, token: str) -> bytes:
    return hashlib.sha256(salt + token.encode()).digest()


class TokenBook:
    """Client id -> salted digest of its token. Built from a mapping or a tokens file."""

    def __init__(self, tokens: Mapping[int, str]) -> None:
        self._salt = secrets.token_bytes(16)
        self._digests = {cid: _digest(self._salt, tok) for cid, tok in tokens.items()}

    def __repr__(self) -> str:
        return f"TokenBook({len(self._digests)} clients)"

    def __contains__(self, client_id: int) -> bool:
        return client_id in self._digests

    def __len__(self) -> int:
        return len(self._digests)

    @property
    def client_ids(self) -> list[int]:
        return sorted(self._digests)

    def check(self, client_id: int, token: str) -> bool:
        """Whether ``token`` is ``client_id``'s (constant time in the token)."""
        expected = self._digests.get(client_id)
        return expected is not None and hmac.compare_digest(expected, _digest(self._salt, token))

    @classmethod
    def from_file(cls, path: str | Path) -> TokenBook:
        return cls(read_tokens(path))


def read_tokens(path: str | Path) -> dict[int, str]:
    """``CLIENT_ID TOKEN`` pairs of a tokens file; every bad line is reported (without tokens)."""
    problems: list[str] = []
    tokens: dict[int, str] = {}
    text = _read(path, "tokens file").decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"tokens file {str(path)!r} line {number}"
        if len(fields) != 2 or not fields[0].isdigit():
            problems.append(f"{where}: expected 'CLIENT_ID TOKEN' with an integer id")
        elif int(fields[0]) in tokens:
            problems.append(f"{where}: client {fields[0]} appears twice")
        elif len(fields[1]) < MIN_TOKEN_CHARS:
            problems.append(f"{where}: client {fields[0]}'s token is shorter than "
                            f"{MIN_TOKEN_CHARS} characters")
        else:
            tokens[int(fields[0])] = fields[1]
    if problems:
        raise ConfigError(problems)
    if not tokens:
        raise ConfigError(f"tokens file {str(path)!r} holds no 'CLIENT_ID TOKEN' lines")
    return tokens


def new_token() -> str:
    """A fresh random token (URL-safe, no '=' so it survives ``key=value`` command lines)."""
    return secrets.token_urlsafe(24)


def write_tokens(path: str | Path, client_ids: list[int]) -> dict[int, str]:
    """Write a tokens file with a new token per client (mode 0600); returns the tokens."""
    tokens = {cid: new_token() for cid in client_ids}
    target = Path(path)
    target.write_text("".join(f"{cid} {tok}\n" for cid, tok in tokens.items()), encoding="utf-8")
    target.chmod(0o600)
    return tokens
