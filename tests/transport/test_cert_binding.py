"""Mutual TLS without tokens: the client id is the one the certificate names (``client-K`` in its
subject CN or a SAN, as ``fedloom certs`` writes them). A valid certificate for another client is
refused with a named reason and supersedes nobody."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fedloom.core.packages import ClientResult
from fedloom.fleets.grpc import GrpcFleet
from fedloom.runtime.client_loop import Backoff, RefusedError, start_client
from fedloom.transport.admission import certificate_ids
from fedloom.transport.certs import CertFiles, make_certs
from fedloom.transport.handlers import MessageType
from fedloom.transport.security import TlsFiles
from fedloom.transport.service import FederationServer
from tests.loopback import Recorder, downlinks, plus_one, thread_clients, tiny_server


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_certs(tmp_path_factory.mktemp("certs"), clients=2)


def _tls(certs: CertFiles, k: int) -> TlsFiles:
    cert, key = certs.client_certs[k]
    return TlsFiles(ca=str(certs.ca), cert=str(cert), key=str(key))


@pytest.fixture
def mtls_no_tokens(certs: CertFiles) -> Iterator[tuple[FederationServer, GrpcFleet]]:
    tls = TlsFiles(cert=str(certs.server_cert), key=str(certs.server_key), ca=str(certs.ca))
    with tiny_server(insecure=False, tls=tls, client_ids=range(2)) as served:
        yield served


def test_a_certificate_for_client_1_claiming_id_0_is_refused_and_supersedes_nobody(
        certs: CertFiles, mtls_no_tokens: tuple[FederationServer, GrpcFleet],
        caplog: pytest.LogCaptureFixture) -> None:
    server, fleet = mtls_no_tokens
    events = Recorder(server.handlers, MessageType.DISCONNECTED, MessageType.REFUSED)
    with thread_clients(server.port, [0], insecure=False, tls=_tls(certs, 0)):
        fleet.wait_for_clients(1, 10)
        with pytest.raises(RefusedError) as err:
            start_client(f"127.0.0.1:{server.port}", client_id=0, client=plus_one,
                         tls=_tls(certs, 1), backoff=Backoff(initial=0.05, give_up_after=10))
        assert "the client certificate is for client 1, not client 0" in str(err.value)
        assert server.connected() == [0] and events.of(MessageType.DISCONNECTED) == []
        assert events.of(MessageType.REFUSED)[0].detail["reason"] == \
            "the client certificate is for client 1, not client 0"
        assert any("refused a client" in r.getMessage() and "for client 1, not client 0"
                   in r.getMessage() for r in caplog.records)
        (result,) = fleet.fit(1, downlinks(1, [0], server.layout))  # the real client 0 serves
    assert isinstance(result, ClientResult) and torch.equal(result.params, torch.ones(8))


def test_each_certificate_serves_its_own_id(
        certs: CertFiles, mtls_no_tokens: tuple[FederationServer, GrpcFleet]) -> None:
    server, fleet = mtls_no_tokens
    with (thread_clients(server.port, [0], insecure=False, tls=_tls(certs, 0)),
          thread_clients(server.port, [1], insecure=False, tls=_tls(certs, 1))):
        fleet.wait_for_clients(2, 10)
        outcomes = fleet.fit(1, downlinks(1, [0, 1], server.layout))
    assert all(isinstance(o, ClientResult) for o in outcomes)


@pytest.mark.parametrize(("auth", "ids"), [
    ({}, None),  # no TLS, or TLS without a client certificate
    ({"x509_common_name": [b"client-7"], "x509_pem_cert": [b"PEM"]}, {7}),
    ({"x509_common_name": [b"hospital"], "x509_subject_alternative_name": [b"client-3"],
      "x509_pem_cert": [b"PEM"]}, {3}),
    ({"x509_common_name": [b"client-1x"], "x509_pem_cert": [b"PEM"]}, set()),
    ({"x509_common_name": [b"hospital"], "x509_pem_cert": [b"PEM"]}, set()),
])
def test_certificate_ids_read_cn_and_san(auth: dict[str, list[bytes]],
                                         ids: set[int] | None) -> None:
    assert certificate_ids(auth) == ids


def test_make_certs_names_each_client_in_its_common_name(certs: CertFiles) -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    for k, (cert, _) in enumerate(certs.client_certs):
        subject = x509.load_pem_x509_certificate(Path(cert).read_bytes()).subject
        assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"client-{k}"
