"""TLS, mutual TLS and tokens: who is let in, who is refused, and what never reaches a log."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fedloom.app.config import load_config
from fedloom.app.server import ServerOptions, build_deployment
from fedloom.cli import main
from fedloom.core.errors import ConfigError, TransportError
from fedloom.core.packages import ClientResult
from fedloom.runtime.client_loop import Backoff, RefusedError, start_client
from fedloom.transport.certs import CertFiles, make_certs
from fedloom.transport.security import TlsFiles, TokenBook, read_tokens
from fedloom.transport.service import FederationServer
from tests.loopback import (
    SYNTH,
    downlinks,
    fedloom_cmd,
    plus_one,
    processes,
    spawn,
    thread_clients,
    tiny_layout,
    tiny_server,
)

GOOD = "good-token-0123456789"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertFiles, CertFiles]:
    root = tmp_path_factory.mktemp("certs")
    return make_certs(root / "ours", clients=2), make_certs(root / "theirs", clients=1)


@pytest.fixture
def mtls(certs: tuple[CertFiles, CertFiles]) -> Iterator[FederationServer]:
    ours, _ = certs
    tls = TlsFiles(cert=str(ours.server_cert), key=str(ours.server_key), ca=str(ours.ca))
    with tiny_server(insecure=False, tls=tls, tokens=TokenBook({0: GOOD, 1: GOOD + "1"}),
                     client_ids=range(2)) as (server, _):
        yield server


def _connect(server: FederationServer, *, client_id: int = 0, token: str | None = GOOD,
             cert: tuple[Path, Path] | None, ca: Path) -> str:
    tls = TlsFiles(ca=str(ca), cert=None if cert is None else str(cert[0]),
                   key=None if cert is None else str(cert[1]))
    return start_client(f"127.0.0.1:{server.port}", client_id=client_id, client=plus_one,
                        token=token, tls=tls, backoff=Backoff(initial=0.05, give_up_after=10))


def test_mutual_tls_with_the_right_token_is_served(certs: tuple[CertFiles, CertFiles]) -> None:
    ours, _ = certs
    tls = TlsFiles(cert=str(ours.server_cert), key=str(ours.server_key), ca=str(ours.ca))
    client_tls = TlsFiles(ca=str(ours.ca), cert=str(ours.client_certs[0][0]),
                          key=str(ours.client_certs[0][1]))
    with (tiny_server(insecure=False, tls=tls, tokens=TokenBook({0: GOOD})) as (server, fleet),
          thread_clients(server.port, [0], insecure=False, tls=client_tls, token=GOOD)):
        fleet.wait_for_clients(1, 10)
        (result,) = fleet.fit(1, downlinks(1, [0], server.layout))
    assert isinstance(result, ClientResult) and torch.equal(result.params, torch.ones(8))


@pytest.mark.parametrize(("case", "expected"), [
    ("wrong token", "refused the credentials: a wrong token for client 0"),
    ("no token", "refused the credentials: no token for client 0"),
    ("unknown id", "refused the client id: client id 5 is not one of this run's clients"),
    ("client cert from another CA", "refuses this client's certificate"),
    ("no client cert", "refuses this client's certificate"),
    ("server from another CA", "TLS handshake with"),
])
def test_refused_clients_get_a_clear_final_error(
        mtls: FederationServer, certs: tuple[CertFiles, CertFiles], case: str, expected: str,
        caplog: pytest.LogCaptureFixture) -> None:
    ours, theirs = certs
    kwargs: dict[str, object] = {"cert": ours.client_certs[0], "ca": ours.ca}
    if case == "wrong token":
        kwargs["token"] = "not-the-token-0000000"
    elif case == "no token":
        kwargs["token"] = None
    elif case == "unknown id":
        kwargs["client_id"] = 5
    elif case == "client cert from another CA":
        kwargs["cert"] = theirs.client_certs[0]
    elif case == "no client cert":
        kwargs["cert"] = None
    else:
        kwargs["ca"] = theirs.ca
    with pytest.raises(RefusedError) as err:
        _connect(mtls, **kwargs)  # type: ignore[arg-type]
    assert expected in str(err.value)
    text = str(err.value) + "\n".join(r.getMessage() for r in caplog.records)
    assert GOOD not in text and "not-the-token" not in text


def test_tokens_are_held_as_salted_hashes() -> None:
    book = TokenBook({3: GOOD})
    assert book.check(3, GOOD) and not book.check(3, GOOD + "x") and not book.check(4, GOOD)
    assert GOOD not in repr(book) and GOOD.encode() not in b"".join(book._digests.values())
    assert TokenBook({3: GOOD})._digests != book._digests  # a fresh salt per book


def test_a_tokens_file_reports_every_bad_line_without_the_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text(f"# id token\n0 {GOOD}\n0 {GOOD}2\nx {GOOD}\n1 short\n2 a b\n\n3 {GOOD}3\n")
    with pytest.raises(ConfigError) as err:
        read_tokens(path)
    assert len(err.value.problems) == 4 and GOOD not in str(err.value)
    path.write_text(f"0 {GOOD}  # the first client\n7 {GOOD}7\n")
    assert read_tokens(path) == {0: GOOD, 7: GOOD + "7"}


def test_secure_by_default(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="without TLS"):
        FederationServer("127.0.0.1:0", layout=tiny_layout())
    with pytest.raises(TransportError, match="without TLS"):
        start_client("127.0.0.1:1", client_id=0, client=plus_one)
    cfg = load_config(None, SYNTH)
    with pytest.raises(ConfigError, match="without TLS"):
        build_deployment(cfg, ServerOptions(address="127.0.0.1:0"))
    with pytest.raises(ConfigError, match="without client authentication"):
        build_deployment(cfg, ServerOptions(address="127.0.0.1:0",
                                            tls=TlsFiles(cert="s.pem", key="s.key")))
    assert main(["server", "x.yaml", "--address", "127.0.0.1:0", *SYNTH]) == 2


def test_certs_command_writes_a_ca_certificates_and_tokens(tmp_path: Path) -> None:
    assert main(["certs", str(tmp_path / "c"), "--clients", "2"]) == 0
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["ca.key", "ca.pem", "client-0.key", "client-0.pem", "client-1.key",
                     "client-1.pem", "server.key", "server.pem", "tokens.txt"]
    assert (tmp_path / "c" / "server.key").stat().st_mode & 0o077 == 0
    assert sorted(read_tokens(tmp_path / "c" / "tokens.txt")) == [0, 1]


@pytest.mark.integration
def test_the_client_command_exits_non_zero_on_a_wrong_token() -> None:
    with tiny_server(tokens=TokenBook({0: GOOD})) as (server, _), processes() as started:
        proc = spawn(started, fedloom_cmd("client", "--server", f"127.0.0.1:{server.port}",
                                          "--client-id", "0", "--insecure", "--retry-for", "20"),
                     env={"FEDLOOM_TOKEN": "wrong-token-000000000"})
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, (out, err)
    assert "fedloom: error: client 0: the server refused the credentials: a wrong token" in err
    assert "wrong-token-000000000" not in out + err
    assert isinstance(proc, subprocess.Popen)
