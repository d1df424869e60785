"""A local certificate authority for demos and tests: ``fedloom certs DIR``.

Writes ``ca.pem`` / ``ca.key`` (the CA), ``server.pem`` / ``server.key`` (valid for the given
host names and IP addresses, by default ``localhost`` and ``127.0.0.1``), ``client-K.pem`` /
``client-K.key`` for mutual TLS, and ``tokens.txt`` (one fresh token per client id). Keys are
ECDSA P-256, written with mode 0600. For production use your organisation's CA; the equivalent
openssl commands are in the docstring of :func:`make_certs`.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedloom.transport.security import write_tokens

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True, kw_only=True)
class CertFiles:
    """Where :func:`make_certs` wrote everything."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_certs: tuple[tuple[Path, Path], ...]
    tokens: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedloom demo"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: Key, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _cert(subject: str, key: Key, issuer: tuple[x509.Name, Key], *, days: int, ca: bool,
          hosts: Sequence[str] = (), usage: x509.ObjectIdentifier | None = None
          ) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer[0])
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer[1], hashes.SHA256())


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_certs(out: str | Path, *, clients: int = 3,
               hosts: Sequence[str] = ("localhost", "127.0.0.1"), days: int = 365,
               ca_name: str = "fedloom demo CA") -> CertFiles:
    """Make a CA, a server certificate for ``hosts``, ``clients`` client certificates and a
    tokens file for client ids ``0 .. clients-1`` under ``out``.

    The same with openssl (EC keys)::

        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \\
            -subj "/CN=fedloom demo CA" -keyout ca.key -out ca.pem
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \\
            -keyout server.key -out server.csr
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 \\
            -extfile <(printf "subjectAltName=DNS:localhost,IP:127.0.0.1") -out server.pem
        # client-K: the same as the server, with -subj "/CN=client-K" and no subjectAltName
    """
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(ca_name, ca_key, (_name(ca_name), ca_key), days=days, ca=True)
    _write_key(ca_key, directory / "ca.key")
    _write_cert(ca, directory / "ca.pem")
    issuer = (ca.subject, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    _write_key(server_key, directory / "server.key")
    _write_cert(_cert(hosts[0] if hosts else "server", server_key, issuer, days=days, ca=False,
                      hosts=hosts, usage=ExtendedKeyUsageOID.SERVER_AUTH),
                directory / "server.pem")
    pairs = []
    for k in range(clients):
        key = ec.generate_private_key(ec.SECP256R1())
        cert_path, key_path = directory / f"client-{k}.pem", directory / f"client-{k}.key"
        _write_key(key, key_path)
        _write_cert(_cert(f"client-{k}", key, issuer, days=days, ca=False,
                          usage=ExtendedKeyUsageOID.CLIENT_AUTH), cert_path)
        pairs.append((cert_path, key_path))
    write_tokens(directory / "tokens.txt", list(range(clients)))
    return CertFiles(ca=directory / "ca.pem", server_cert=directory / "server.pem",
                     server_key=directory / "server.key", client_certs=tuple(pairs),
                     tokens=directory / "tokens.txt")
