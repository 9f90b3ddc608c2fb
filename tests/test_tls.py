"""
Native TLS: a real HTTPS round trip, TLS below 1.2 refused, HTTP/1.1 only,
HSTS, and a missing or broken PEM refused at start with one clear line.
"""

from __future__ import annotations

import json
import socket
import ssl
import warnings
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.threads import deferToThread

from mcpgateway.config import parse_config
from mcpgateway.devcert import main as devcert
from mcpgateway.gateway import Gateway
from mcpgateway.http.rest import GatewayApp
from mcpgateway.http.site import GatewaySite
from mcpgateway.http.tls import TLSError, load_tls
from mcpgateway.policy.auth import Authenticator
from mcpgateway.tap import Options, StartRefused

from .conftest import PASSWORD, USER


@pytest.fixture
def pem(tmp_path: Path) -> str:
    path = tmp_path / "certs" / "server.pem"
    devcert([str(path), "--host", "localhost", "--host", "127.0.0.1"])
    assert path.stat().st_mode & 0o777 == 0o600
    return str(path)


def _https_get(port: int, cafile: str, path: str, *, tls_max: ssl.TLSVersion | None = None) -> tuple[str, str, bytes]:
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["h2", "http/1.1"])
    if tls_max is not None:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # offering old TLS is the point
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = tls_max
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        return tls.version() or "", tls.selected_alpn_protocol() or "", data


@pytest_twisted.ensureDeferred
async def test_https_round_trip_tls12_minimum_http11_only(pem: str, tmp_path: Path) -> None:
    config = parse_config({"server": {"auth_user": USER, "auth_password": PASSWORD}, "services": {}}, {})
    gateway = Gateway(config, reactor, reactor)
    site = GatewaySite(GatewayApp(gateway, Authenticator(config.server)).resource(), 1000)
    port = await SSL4ServerEndpoint(reactor, 0, load_tls(pem), interface="127.0.0.1").listen(site)
    number = port.getHost().port
    try:
        version, alpn, answer = await deferToThread(_https_get, number, pem, "/health")
        assert version in ("TLSv1.2", "TLSv1.3")
        assert alpn == "http/1.1", "h2 is never negotiated"
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"Strict-Transport-Security: max-age=31536000" in head
        assert b'"status":"healthy"' in body
        with pytest.raises((ssl.SSLError, OSError)):
            await deferToThread(_https_get, number, pem, "/health", tls_max=ssl.TLSVersion.TLSv1_1)
    finally:
        await port.stopListening()
        await gateway.stop()


def test_tls_options_refuse_old_versions(pem: str) -> None:
    options = load_tls(pem).getContext().set_options(0)  # returns the options in force
    assert options & SSL.OP_NO_TLSv1
    assert options & SSL.OP_NO_TLSv1_1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the TLS certificate"),
        (b"not a pem", "no certificate found"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "no readable private key"),
    ],
)
def test_broken_pem_is_refused(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "server.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TLSError) as info:
        load_tls(str(path))
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_key_that_does_not_fit_is_refused(tmp_path: Path, pem: str) -> None:
    other = tmp_path / "other.pem"
    devcert([str(other)])
    mixed = tmp_path / "mixed.pem"
    first, second = Path(pem).read_bytes(), other.read_bytes()
    cert_only = first[: first.index(b"-----END CERTIFICATE-----") + 26]
    key_only = second[second.index(b"-----BEGIN PRIVATE KEY-----") :]
    mixed.write_bytes(cert_only + key_only)
    with pytest.raises(TLSError, match="does not fit"):
        load_tls(str(mixed))


def _config(tmp_path: Path, **server: Any) -> str:
    path = tmp_path / "config.json"
    raw = {"server": {"auth_user": "u", "auth_password": "p", **server}, "services": {}}
    path.write_text(json.dumps(raw))
    return str(path)


def test_configured_certificate_must_exist(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(StartRefused) as info:
        Options().parseOptions(["--config", _config(tmp_path, tls_cert=missing)])
    assert f"TLS error: {missing}: cannot read" in str(info.value)


def test_default_certificate_used_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path)
    monkeypatch.chdir(tmp_path)
    options = Options()
    options.parseOptions(["--config", config])
    assert options["tls"] is None, "no certs/server.pem: plain HTTP"
    devcert(["certs/server.pem"])
    options = Options()
    options.parseOptions(["--config", config])
    assert options["tls"] is not None
