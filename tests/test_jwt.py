"""
JWT / OIDC principals and the MCP authorization metadata, against a real
JWKS endpoint on loopback (a twisted.web resource on a real port, counting
its requests) serving keys made here, with tokens signed by PyJWT.

The verifier's own tests run L{Tokens} with the real fetcher and a
L{Clock} for every time it reads (token times, the JWKS cache, the refresh
interval); the gateway's run a live gateway, whose clock is the reactor's,
so their tokens are dated from the wall clock with margins of minutes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import jwt
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from mcp import Client
from mcp.client.auth.utils import (
    build_protected_resource_metadata_discovery_urls,
    extract_resource_metadata_from_www_auth,
)
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import ProtectedResourceMetadata
from mcp.shared.auth_utils import check_resource_allowed, resource_url_from_server_url
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from mcpgateway.config import ConfigError, IssuerConfig, parse_config
from mcpgateway.config.issuers import ASYMMETRIC
from mcpgateway.http.fetch import FetchError, fetch
from mcpgateway.observe.metrics import route_of
from mcpgateway.policy.auth import hash_token
from mcpgateway.policy.jwks import MAX_JWKS_BYTES
from mcpgateway.policy.jwt import Tokens, Verdict
from mcpgateway.runtime import GatewayService
from mcpgateway.tap import Options, makeService

from .conftest import AUTH, fixture_service

T = TypeVar("T")

NOW = 1_800_000_000.0
ISSUER = "http://127.0.0.1/idp/"
AUDIENCE = "mcpgateway"
STATIC_TOKEN = "static-token-" + "0123456789" * 4  # a strong static token, alongside JWTs

RSA_1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_1 = ec.generate_private_key(ec.SECP256R1())


# -- keys, tokens and the JWKS endpoint --------------------------------------------------------


def jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    """
    @return: The public JWK of the private C{key}, with C{kid}.
    """
    public = key.public_key()
    algorithm = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm
    return {**algorithm.to_jwk(public, as_dict=True), "kid": kid, "use": "sig", **extra}


def pem(key: Any) -> str:
    """
    @return: The PEM of C{key}'s public key.
    """
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def claims(now: float, **overrides: Any) -> dict[str, Any]:
    """
    @return: Valid claims at C{now}: alice, an hour to live; C{None} removes a claim.
    """
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": int(now),
        "exp": int(now) + 3600,
        "roles": ["reader"],
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def token(key: Any = RSA_1, kid: str | None = "k1", alg: str = "RS256", now: float = NOW, **overrides: Any) -> bytes:
    """
    @return: A token signed with C{key}, valid at C{now} unless C{overrides} say otherwise.
    """
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(now, **overrides), key, algorithm=alg, headers=headers).encode()


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def forged(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> bytes:
    """
    @return: A token with any header: HMAC-SHA256-signed with C{secret}, or unsigned.
    """
    signing_input = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(payload).encode())
    signature = b"" if secret is None else b64(hmac.new(secret, signing_input, hashlib.sha256).digest())
    return signing_input + b"." + signature


class JwksEndpoint(Resource):
    """
    A JWKS on a real port: C{keys} served as C{{"keys": [...]}} with
    C{status}; C{requests} counts the GETs; C{hang} never answers.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[dict[str, Any]] = [jwk(RSA_1, "k1")]
        self.status = 200
        self.requests = 0
        self.body: bytes | None = None
        self.hang = False
        self.url = ""

    def render_GET(self, request: Any) -> Any:
        self.requests += 1
        if self.hang:
            return NOT_DONE_YET
        request.setResponseCode(self.status)
        request.setHeader(b"Content-Type", b"application/json")
        return self.body if self.body is not None else json.dumps({"keys": self.keys}).encode()


@pytest_twisted.async_yield_fixture
async def jwks() -> AsyncIterator[JwksEndpoint]:
    endpoint = JwksEndpoint()
    site = Site(endpoint)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    endpoint.url = f"http://127.0.0.1:{port.getHost().port}/jwks.json"
    yield endpoint
    await port.stopListening()


async def closed_port_url() -> str:
    """
    @return: A loopback URL nobody listens at any more (a JWKS that is down).
    """
    port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
    number = port.getHost().port
    await port.stopListening()
    return f"http://127.0.0.1:{number}/jwks.json"


def issuer(name: str = "corp", **settings: Any) -> IssuerConfig:
    """
    @return: An issuer read as the configuration reads it.
    """
    raw = {"issuer": ISSUER, "audience": AUDIENCE, **settings}
    config = parse_config({"server": {"auth_token": STATIC_TOKEN, "issuers": {name: raw}}}, {})
    return config.server.issuers[0]


def verifier(*issuers: IssuerConfig) -> tuple[Tokens, Clock]:
    clock = Clock()
    clock.advance(NOW)
    return Tokens(issuers, clock, fetch), clock


@pytest.fixture
def jwt_warnings() -> Iterator[list[str]]:
    """
    @return: The warnings of C{mcpgateway.jwt}, as formatted text, as they are logged.
    """
    from twisted.logger import formatEvent

    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "mcpgateway.jwt" and event["log_level"].name == "warn":
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


# -- the verifier ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_valid_token_names_its_principal_and_roles(jwks: JwksEndpoint) -> None:
    tokens, _ = verifier(
        issuer(
            jwks_url=jwks.url,
            roles_claim=["roles", "groups", "scope", "realm_access.roles"],
            admin_roles=["mcp-admin"],
        )
    )
    verdict = await tokens.verify(token())
    assert verdict == Verdict(verdict.principal, issuer="corp")
    assert verdict.principal is not None
    assert (verdict.principal.name, verdict.principal.role, verdict.principal.roles) == (
        "corp:alice",
        "agent",
        ("reader",),
    )
    # Roles from every roles claim, once each, in order; scope is space-separated.
    admin = token(
        sub="bob@example.com",
        roles=["reader"],
        groups=["ops", "reader"],
        scope="tools:read mcp-admin",
        realm_access={"roles": ["kc-role"]},
    )
    verdict = await tokens.verify(admin)
    assert verdict.principal is not None
    assert verdict.principal.name == "corp:bob@example.com"
    assert verdict.principal.role == "admin"
    assert verdict.principal.roles == ("reader", "ops", "tools:read", "mcp-admin", "kc-role")
    assert verdict.principal.admin
    # A numeric subject is a name too; one with a space is not.
    verdict = await tokens.verify(token(sub=12345))
    assert verdict.principal is not None and verdict.principal.name == "corp:12345"
    assert await tokens.verify(token(sub="two words")) == Verdict(None, "no name", "corp")
    assert await tokens.verify(token(sub=None)) == Verdict(None, "no name", "corp")
    assert jwks.requests == 1, "one fetch: the keys are cached"


@pytest_twisted.ensureDeferred
async def test_name_claim_and_other_algorithms(jwks: JwksEndpoint) -> None:
    jwks.keys = [jwk(RSA_1, "k1"), jwk(EC_1, "e1")]
    tokens, _ = verifier(issuer(jwks_url=jwks.url, name_claim="email"))
    verdict = await tokens.verify(token(email="carol@example.com"))
    assert verdict.principal is not None and verdict.principal.name == "corp:carol@example.com"
    # ES256 with an EC key, PS256 with an RSA key that names no alg.
    for signed in (token(EC_1, "e1", "ES256", email="e@x"), token(RSA_1, "k1", "PS256", email="p@x")):
        verdict = await tokens.verify(signed)
        assert verdict.principal is not None, verdict
    # RS256 against the EC key of the kid: that key cannot verify it.
    assert (await tokens.verify(token(RSA_1, "e1", "RS256", email="x@x"))).reason == "unknown key"


@pytest_twisted.ensureDeferred
async def test_time_checks_with_and_without_leeway(jwks: JwksEndpoint) -> None:
    strict, _ = verifier(issuer("strict", jwks_url=jwks.url, leeway=0))
    tolerant, _ = verifier(issuer("tolerant", jwks_url=jwks.url, leeway=30))
    cases = [
        # (claims, strict reason, tolerant reason)
        ({"exp": int(NOW) - 1}, "expired", ""),
        ({"exp": int(NOW) - 31}, "expired", "expired"),
        ({"exp": int(NOW)}, "expired", ""),
        ({"nbf": int(NOW) + 20}, "not yet valid", ""),
        ({"nbf": int(NOW) + 40}, "not yet valid", "not yet valid"),
        ({"iat": int(NOW) + 20}, "not yet valid", ""),
        ({"iat": int(NOW) + 40}, "not yet valid", "not yet valid"),
        ({"nbf": int(NOW) - 5}, "", ""),
        ({"exp": None}, "no expiry", "no expiry"),
        ({"exp": "tomorrow"}, "no expiry", "no expiry"),
        ({"nbf": "now"}, "malformed", "malformed"),
    ]
    for overrides, strict_reason, tolerant_reason in cases:
        signed = token(**overrides)
        assert (await strict.verify(signed)).reason == strict_reason, overrides
        assert (await tolerant.verify(signed)).reason == tolerant_reason, overrides


@pytest_twisted.ensureDeferred
async def test_forged_and_foreign_tokens_are_refused(jwks: JwksEndpoint) -> None:
    tokens, _ = verifier(issuer(jwks_url=jwks.url))
    public_pem = pem(RSA_1).encode()
    good = claims(NOW)
    cases = [
        (token(iss="https://evil.example/"), "unknown issuer"),
        (token(iss=None), "unknown issuer"),
        (token(aud="someone-else"), "wrong audience"),
        (token(aud=["someone-else", AUDIENCE]), ""),
        (token(aud=None), "wrong audience"),
        (token(RSA_OTHER, "k1"), "bad signature"),
        (token(kid="unknown"), "unknown key"),
        # alg none, in any spelling, signed or not.
        (forged({"alg": "none", "kid": "k1"}, good, None), "algorithm not allowed"),
        (forged({"alg": "None", "kid": "k1"}, good, None), "algorithm not allowed"),
        # Key confusion: HS256 "signed" with the RSA public key as the HMAC secret.
        (forged({"alg": "HS256", "kid": "k1", "typ": "JWT"}, good, public_pem), "algorithm not allowed"),
        (forged({"kid": "k1"}, good, None), "algorithm not allowed"),
        (b"e30.e30.", "unknown issuer"),
        (b"bm90IGpzb24.e30.sig", "malformed"),
        (forged({"alg": "RS256", "kid": "k1", "b64": False}, good, None), "malformed"),
    ]
    for signed, reason in cases:
        assert (await tokens.verify(signed)).reason == reason, (signed, reason)


@pytest_twisted.ensureDeferred
async def test_a_swapped_payload_fails_the_signature(jwks: JwksEndpoint) -> None:
    tokens, _ = verifier(issuer(jwks_url=jwks.url))
    header, _, signature = token().split(b".")
    admin_claims = b64(json.dumps(claims(NOW, sub="root")).encode())
    assert await tokens.verify(header + b"." + admin_claims + b"." + signature) == Verdict(
        None, "bad signature", "corp"
    )


@pytest_twisted.ensureDeferred
async def test_a_static_key_and_a_shared_secret() -> None:
    secret = "s" * 32
    tokens, _ = verifier(
        issuer("pem", key=pem(EC_1)),
        replace(issuer("hs", secret=secret), issuer="internal-minter"),
    )
    verdict = await tokens.verify(token(EC_1, None, "ES256"))
    assert verdict.principal is not None and verdict.principal.name == "pem:alice"
    hs = jwt.encode(claims(NOW, iss="internal-minter"), secret, algorithm="HS256").encode()
    verdict = await tokens.verify(hs)
    assert verdict.principal is not None and verdict.principal.name == "hs:alice"
    # The PEM issuer takes no HMAC token, whatever its secret; the HMAC issuer no RS256.
    confused = forged({"alg": "HS256"}, claims(NOW), pem(EC_1).encode())
    assert (await tokens.verify(confused)).reason == "algorithm not allowed"
    wrong_secret = jwt.encode(claims(NOW, iss="internal-minter"), "t" * 32, algorithm="HS256").encode()
    assert (await tokens.verify(wrong_secret)).reason == "bad signature"
    rs = token(iss="internal-minter")
    assert (await tokens.verify(rs)).reason == "algorithm not allowed"


@pytest_twisted.ensureDeferred
async def test_key_rotation(jwks: JwksEndpoint) -> None:
    config = issuer(jwks_url=jwks.url, cache_seconds=600, refresh_seconds=30)
    tokens, clock = verifier(config)
    old, new = token(RSA_1, "k1"), token(RSA_2, "k2")
    assert (await tokens.verify(old)).principal is not None
    assert jwks.requests == 1

    # The identity provider publishes k2 next to k1 and starts signing with it.
    jwks.keys = [jwk(RSA_1, "k1"), jwk(RSA_2, "k2")]
    clock.advance(config.refresh_seconds)
    assert (await tokens.verify(new)).principal is not None, "accepted after one refresh"
    assert jwks.requests == 2
    assert (await tokens.verify(old)).principal is not None
    assert jwks.requests == 2

    # k1 is withdrawn: once the cache is due, the next token refreshes it.
    jwks.keys = [jwk(RSA_2, "k2")]
    assert (await tokens.verify(old)).principal is not None, "cached until cache_seconds"
    clock.advance(config.cache_seconds)
    assert await tokens.verify(old) == Verdict(None, "unknown key", "corp")
    assert jwks.requests == 3
    assert (await tokens.verify(new)).principal is not None
    assert (await tokens.verify(old)).reason == "unknown key"
    assert jwks.requests == 3, "no fetch per token"


@pytest_twisted.ensureDeferred
async def test_a_flood_of_unknown_kids_is_bounded(jwks: JwksEndpoint) -> None:
    config = issuer(jwks_url=jwks.url, refresh_seconds=30)
    tokens, clock = verifier(config)
    assert (await tokens.verify(token())).principal is not None
    assert jwks.requests == 1

    def flood(count: int) -> Deferred[list[Verdict]]:
        return gatherResults([tokens.verify(token(kid=uuid.uuid4().hex)) for _ in range(count)])

    # Right after a fetch: none at all.
    verdicts = await flood(50)
    assert {verdict.reason for verdict in verdicts} == {"unknown key"}
    assert jwks.requests == 1
    # Once refresh_seconds have passed: one, shared by the 50 that arrive together.
    clock.advance(config.refresh_seconds)
    verdicts = await flood(50)
    assert {verdict.reason for verdict in verdicts} == {"unknown key"}
    assert jwks.requests == 2
    for _ in range(20):
        assert (await tokens.verify(token(kid=uuid.uuid4().hex))).reason == "unknown key"
    assert jwks.requests == 2
    # Refused tokens are not remembered; the valid one still verifies.
    assert (await tokens.verify(token())).principal is not None


@pytest_twisted.ensureDeferred
async def test_a_jwks_that_is_down(jwks: JwksEndpoint, jwt_warnings: list[str]) -> None:
    warnings = jwt_warnings
    down = await closed_port_url()
    tokens, clock = verifier(issuer(jwks_url=down, refresh_seconds=30))
    verdict = await tokens.verify(token())
    assert verdict == Verdict(None, "keys unavailable", "corp", counted=False)
    assert len(warnings) == 1 and "cannot be fetched" in warnings[0] and "refused (401)" in warnings[0]
    # Not retried on every token; retried after refresh_seconds.
    assert (await tokens.verify(token())).reason == "keys unavailable"
    assert len(warnings) == 1
    clock.advance(30)
    assert (await tokens.verify(token())).reason == "keys unavailable"
    assert len(warnings) == 2

    # Known keys stay in use while the JWKS fails (its outage logs nobody out).
    tokens, clock = verifier(issuer(jwks_url=jwks.url, cache_seconds=600, refresh_seconds=30))
    assert (await tokens.verify(token())).principal is not None
    jwks.status = 503
    clock.advance(600)
    assert (await tokens.verify(token(sub="dave"))).principal is not None
    assert jwks.requests == 2
    assert "keeping the 1 keys known" in warnings[-1]
    # A kid it does not know may be a new one: not the client's fault.
    assert await tokens.verify(token(kid="k9")) == Verdict(None, "keys unavailable", "corp", counted=False)
    # Garbage in a 200 is a failed fetch too.
    jwks.status, jwks.body = 200, b"<html>login</html>"
    clock.advance(30)
    assert (await tokens.verify(token(sub="erin"))).principal is not None
    assert jwks.requests == 3 and "unusable" in warnings[-1]


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest_twisted.ensureDeferred
async def test_unusable_keys_in_a_jwks_are_skipped(jwks: JwksEndpoint) -> None:
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 -- to be refused
    secret_jwk = {"kty": "oct", "kid": "s1", "k": b64(b"x" * 32).decode()}
    jwks.keys = [
        jwk(short, "short"),
        secret_jwk,
        jwk(RSA_2, "enc", use="enc"),
        jwk(RSA_1, "k1", alg="RS256"),
        {"kty": "RSA", "kid": "broken", "n": 5},
    ]
    tokens, _ = verifier(issuer(jwks_url=jwks.url))
    assert (await tokens.verify(token())).principal is not None
    keys = tokens.issuers["corp"].jwks
    assert keys is not None
    assert [kid for kid, _ in keys.keys] == ["k1"]
    assert (await tokens.verify(token(short, "short"))).reason == "unknown key"
    assert (await tokens.verify(token(RSA_2, "enc"))).reason == "unknown key"
    # A key that names its alg verifies that one only.
    assert (await tokens.verify(token(RSA_1, "k1", "PS256"))).reason == "unknown key"


@pytest_twisted.ensureDeferred
async def test_the_fetch_is_bounded(jwks: JwksEndpoint) -> None:
    jwks.body = b" " * (MAX_JWKS_BYTES + 1)
    with pytest.raises(FetchError, match="over"):
        await fetch(jwks.url, 5, MAX_JWKS_BYTES)
    jwks.body, jwks.status = b"{}", 404
    with pytest.raises(FetchError, match="HTTP 404"):
        await fetch(jwks.url, 5, MAX_JWKS_BYTES)
    jwks.hang = True
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"no complete answer within 0\.3 s"):
        await fetch(jwks.url, 0.3, MAX_JWKS_BYTES)
    assert time.monotonic() - started < 3


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"jwks_url": "https://idp/jwks", "algorithms": ["none"]}, "server.issuers.corp.algorithms[0]: 'none'"),
        ({"jwks_url": "https://idp/jwks", "algorithms": ["HS256"]}, "server.issuers.corp.algorithms[0]: 'HS256'"),
        ({"key": pem(RSA_1), "algorithms": ["ES256"]}, "server.issuers.corp.algorithms[0]: 'ES256' is refused"),
        ({"secret": "s" * 32, "algorithms": ["RS256"]}, "server.issuers.corp.algorithms[0]: 'RS256'"),
        ({"secret": "s" * 31}, "server.issuers.corp.secret: at least 32 bytes"),
        ({"secret": "s" * 40, "algorithms": ["HS512"]}, "server.issuers.corp.secret: at least 64 bytes"),
        ({}, "server.issuers.corp: give exactly one of jwks_url, key or secret (given: none)"),
        ({"jwks_url": "https://idp/jwks", "secret": "s" * 32}, "(given: jwks_url, secret)"),
        ({"jwks_url": "http://idp.example/jwks"}, "server.issuers.corp.jwks_url: plain http is refused"),
        ({"jwks_url": "ftp://idp/jwks"}, "server.issuers.corp.jwks_url: expected an https:// URL"),
        ({"key": "not a pem"}, "server.issuers.corp.key: expected a PEM public key"),
        (
            {
                "key": RSA_1.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                ).decode()
            },
            "server.issuers.corp.key: this is a private key",
        ),
        (
            {"key": pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))},  # noqa: S505
            "server.issuers.corp.key: an RSA key of 1024 bits is too short",
        ),
        ({"jwks_url": "https://idp/jwks", "leeway": 301}, "server.issuers.corp.leeway: at most 300"),
        ({"jwks_url": "https://idp/jwks", "audience": []}, "server.issuers.corp.audience: expected"),
        ({"jwks_url": "https://idp/jwks", "audience": None}, "server.issuers.corp.audience: expected a list"),
        ({"jwks_url": "https://idp/jwks", "issuer": ""}, "server.issuers.corp.issuer: missing"),
        ({"jwks_url": "https://idp/jwks", "roles_claim": ["a..b"]}, "server.issuers.corp.roles_claim[0]"),
        ({"jwks_url": "https://idp/jwks", "admin_roles": ["a b"]}, "server.issuers.corp.admin_roles[0]"),
        ({"jwks_url": "https://idp/jwks", "cache_seconds": 0}, "server.issuers.corp.cache_seconds: must be"),
        ({"jwks_url": "https://idp/jwks", "kid": "x"}, "server.issuers.corp.kid: unknown key"),
    ],
)
def test_config_errors_name_the_key_path(entry: dict[str, Any], message: str) -> None:
    raw = {"issuer": ISSUER, "audience": AUDIENCE, **entry}
    with pytest.raises(ConfigError) as error:
        parse_config({"server": {"issuers": {"corp": raw}}}, {})
    assert message in str(error.value)


def test_config_of_names_urls_and_defaults() -> None:
    with pytest.raises(ConfigError, match=r"server.issuers.a:b: an issuer's name is 1-32"):
        parse_config({"server": {"issuers": {"a:b": {}}}}, {})
    same = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": "https://idp/jwks"}
    with pytest.raises(ConfigError, match=r"server\.issuers\.two\.issuer: .* is also the issuer of one"):
        parse_config({"server": {"issuers": {"one": same, "two": same}}}, {})
    with pytest.raises(ConfigError, match=r"server\.public_url: expected https://host"):
        parse_config({"server": {"public_url": "https://gw.example/prefix"}}, {})
    server = parse_config({"server": {"public_url": "https://GW.example:8443/", "issuers": {"corp": same}}}, {}).server
    assert server.public_url == "https://gw.example:8443"
    entry = server.issuers[0]
    # Every asymmetric algorithm by default: a JWK verifies only what its type (and alg) allow.
    assert entry.algorithms == ASYMMETRIC
    assert set(ASYMMETRIC) == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
    assert (entry.leeway, entry.cache_seconds, entry.refresh_seconds, entry.name_claim) == (30.0, 600.0, 30.0, "sub")
    assert entry.roles_claim == ("roles",) and entry.audience == (AUDIENCE,)
    # ${VAR} in a key, as for every string; a loopback JWKS may be plain http.
    env = {"IDP_KEY": pem(EC_1)}
    keyed = {"issuer": ISSUER, "audience": AUDIENCE, "key": "${IDP_KEY}"}
    loopback = {"issuer": "other", "audience": AUDIENCE, "jwks_url": "http://localhost:8081/jwks"}
    server = parse_config({"server": {"issuers": {"k": keyed, "l": loopback}}}, env).server
    assert server.issuers[0].algorithms == ("ES256",)
    assert server.issuers[1].jwks_url == "http://localhost:8081/jwks"


# -- the gateway ---------------------------------------------------------------------------------


def bearer(value: bytes | str) -> dict[str, Any]:
    raw = value if isinstance(value, bytes) else value.encode()
    return {"auth": None, "headers": {b"Authorization": [b"Bearer " + raw]}}


def live_token(key: Any = RSA_1, kid: str = "k1", **overrides: Any) -> bytes:
    """
    @return: A token valid now on the wall clock (the live gateway's).
    """
    return token(key, kid, now=time.time(), **overrides)


def challenge(response: Any) -> str:
    """
    @return: The Bearer challenge of a 401.
    """
    values = [value.decode() for value in response.headers.getRawHeaders(b"www-authenticate")]
    assert any(value.startswith("Basic ") for value in values), values
    (found,) = [value for value in values if value.startswith("Bearer ")]
    return found


def start(live: Any, jwks: JwksEndpoint, **server: Any) -> Any:
    issuers = {
        "corp": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks.url, "admin_roles": ["mcp-admin"]},
        **server.pop("issuers", {}),
    }
    principals = [{"name": "alice", "role": "agent", "token_hash": hash_token(STATIC_TOKEN)}]
    return live({"fx": fixture_service()}, server={"issuers": issuers, "principals": principals, **server})


@pytest_twisted.ensureDeferred
async def test_jwt_principals_use_the_gateway(live: Any, jwks: JwksEndpoint) -> None:
    gw = start(live, jwks)
    alice_jwt = bearer(live_token())
    response, body = await gw.request("POST", "/services/fx/call", {"tool": "counter", "session_id": "j1"}, **alice_jwt)
    assert response.code == 200, body
    # The static principal "alice" is someone else: it does not see corp:alice's session.
    response, body = await gw.request(
        "POST", "/services/fx/call", {"tool": "counter", "session_id": "s1"}, **bearer(STATIC_TOKEN)
    )
    assert response.code == 200, body
    _, mine = await gw.request("GET", "/sessions", **alice_jwt)
    assert set(mine) == {"j1"} and mine["j1"]["owner"] == "corp:alice"
    _, theirs = await gw.request("GET", "/sessions", **bearer(STATIC_TOKEN))
    assert set(theirs) == {"s1"} and theirs["s1"]["owner"] == "alice"
    # An admin role of the token makes an admin; Basic credentials still work.
    admin = bearer(live_token(sub="ops", roles=["mcp-admin"]))
    for kwargs in (admin, {"auth": AUTH}):
        _, everything = await gw.request("GET", "/sessions", **kwargs)
        assert set(everything) == {"j1", "s1"}, kwargs
    assert jwks.requests == 1


@pytest_twisted.ensureDeferred
async def test_a_refused_jwt_gets_an_invalid_token_challenge_and_counts(live: Any, jwks: JwksEndpoint) -> None:
    gw = start(
        live,
        jwks,
        issuers={
            "down": {"issuer": "https://down.example/", "audience": AUDIENCE, "jwks_url": await closed_port_url()}
        },
    )
    expired = bearer(live_token(exp=int(time.time()) - 3600))
    response, body = await gw.request("GET", "/sessions", **expired)
    assert (response.code, body["code"]) == (401, "unauthorized")
    assert body["error"] == "the bearer token is refused: expired"
    metadata = f"{gw.url}/.well-known/oauth-protected-resource"
    assert challenge(response) == (
        f'Bearer realm="mcpgateway", resource_metadata="{metadata}", error="invalid_token", error_description="expired"'
    )
    # A JWKS that is down: 401 (not 500), and never counted against the address.
    down = bearer(live_token(iss="https://down.example/"))
    for _ in range(25):
        response, body = await gw.request("GET", "/sessions", **down)
        assert (response.code, body["code"]) == (401, "unauthorized"), body
    assert 'error_description="keys unavailable"' in challenge(response)
    # A wrong static token: invalid_token too.
    response, _ = await gw.request("GET", "/sessions", **bearer("x" * 40))
    assert 'error="invalid_token", error_description="unknown token"' in challenge(response)
    # Missing credentials: no error (RFC 6750 section 3.1).
    response, _ = await gw.request("GET", "/sessions", auth=None)
    assert challenge(response) == f'Bearer realm="mcpgateway", resource_metadata="{metadata}"'


@pytest_twisted.ensureDeferred
async def test_bad_jwts_use_up_the_budget_but_valid_ones_pass(live: Any, jwks: JwksEndpoint) -> None:
    limited = live(
        {"fx": fixture_service()},
        server={"issuers": {"corp": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks.url}}},
        rate_limiting={"auth_failure_limit": "3 per minute"},
    )
    forged_token = bearer(live_token(RSA_OTHER))
    for _ in range(3):
        response, body = await limited.request("GET", "/sessions", **forged_token)
        assert (response.code, body["code"]) == (401, "unauthorized")
    response, body = await limited.request("GET", "/sessions", **forged_token)
    assert (response.code, body["code"]) == (429, "rate_limited")
    # The address is over its budget: a password is refused unchecked, a valid JWT is not.
    response, _ = await limited.request("GET", "/sessions", auth=AUTH)
    assert response.code == 429
    for _ in range(5):
        response, body = await limited.request("GET", "/sessions", **bearer(live_token()))
        assert response.code == 200, body
    value = limited.app.metrics.registry.get_sample_value("mcpgateway_auth_failures_total")
    assert value == 4  # the forged tokens (the password was refused unchecked)


@pytest_twisted.ensureDeferred
async def test_mcp_401_points_to_the_resource_metadata(live: Any, jwks: JwksEndpoint) -> None:
    gw = start(live, jwks)
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    for path in ("/mcp", "/services/fx/mcp"):
        response, body = await gw.request(
            "POST",
            path,
            ping,
            auth=None,
            headers={b"Content-Type": [b"application/json"], b"Accept": [b"application/json, text/event-stream"]},
        )
        assert (response.code, body["code"]) == (401, "unauthorized")
        url = f"{gw.url}/.well-known/oauth-protected-resource{path}"
        assert challenge(response) == f'Bearer realm="mcpgateway", resource_metadata="{url}"'
        # What the official SDK client makes of it: that URL first, then the
        # path form and the root, and a document it accepts for this server.
        headers = [("WWW-Authenticate", value) for value in response.headers.getRawHeaders(b"www-authenticate")]
        found = extract_resource_metadata_from_www_auth(httpx2.Response(401, headers=headers))
        assert found == url
        urls = build_protected_resource_metadata_discovery_urls(found, gw.url + path)
        assert urls == [url, url, f"{gw.url}/.well-known/oauth-protected-resource"]
        response, document = await gw.request("GET", urls[0][len(gw.url) :], auth=None)
        assert response.code == 200
        assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
        assert document == {
            "resource": gw.url + path,
            "authorization_servers": [ISSUER],
            "bearer_methods_supported": ["header"],
        }
        metadata = ProtectedResourceMetadata.model_validate_json(json.dumps(document))
        assert check_resource_allowed(resource_url_from_server_url(gw.url + path), str(metadata.resource))


@pytest_twisted.ensureDeferred
async def test_the_well_known_documents(live: Any, jwks: JwksEndpoint) -> None:
    gw = start(
        live,
        jwks,
        public_url="https://gw.example.com",
        issuers={
            "other": {
                "issuer": "https://login.example.org/tenant/v2.0",
                "audience": AUDIENCE,
                "jwks_url": jwks.url,
                "scopes": ["mcp.tools", "openid"],
            },
            "minter": {"issuer": "internal-minter", "audience": AUDIENCE, "secret": "s" * 32, "scopes": ["openid"]},
        },
    )
    response, document = await gw.request("GET", "/.well-known/oauth-protected-resource", auth=None)
    assert response.code == 200
    assert document == {
        "resource": "https://gw.example.com",
        "authorization_servers": [ISSUER, "https://login.example.org/tenant/v2.0"],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["mcp.tools", "openid"],
    }
    _, document = await gw.request("GET", "/.well-known/oauth-protected-resource/services/fx/mcp", auth=None)
    assert document["resource"] == "https://gw.example.com/services/fx/mcp"
    response, body = await gw.request("GET", "/.well-known/oauth-protected-resource/services/nope/mcp", auth=None)
    assert (response.code, body["code"]) == (404, "service_not_found")
    response, body = await gw.request("GET", "/.well-known/oauth-protected-resource/services/a.b/mcp", auth=None)
    assert (response.code, body["code"]) == (400, "invalid_service_name")
    response, _ = await gw.request("POST", "/.well-known/oauth-protected-resource", auth=None)
    assert response.code == 405
    response, _ = await gw.request("GET", "/mcp", auth=None)
    assert 'resource_metadata="https://gw.example.com/.well-known/oauth-protected-resource/mcp"' in challenge(response)
    assert route_of("/.well-known/oauth-protected-resource/services/fx/mcp") == (
        "/.well-known/oauth-protected-resource/services/<name>/mcp"
    )


@pytest_twisted.ensureDeferred
async def test_without_issuers_nothing_is_advertised(live: Any) -> None:
    gw = live({"fx": fixture_service()})
    for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"):
        response, body = await gw.request("GET", path, auth=None)
        assert (response.code, body["code"]) == (404, "not_found")
    response, _ = await gw.request("GET", "/mcp", auth=None)
    assert challenge(response) == 'Bearer realm="mcpgateway"'
    # A JWT-shaped token is just an unknown static token here.
    response, _ = await gw.request("GET", "/sessions", **bearer(live_token()))
    assert challenge(response) == 'Bearer realm="mcpgateway", error="invalid_token", error_description="unknown token"'


def in_thread(coroutine: Awaitable[T]) -> Deferred[T]:
    """
    Run an asyncio coroutine (the SDK client) in a thread, so the reactor keeps serving.
    """
    return deferToThread(asyncio.run, coroutine)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
@pytest_twisted.ensureDeferred
async def test_the_sdk_client_lists_tools_with_a_jwt(live: Any, jwks: JwksEndpoint, mode: str) -> None:
    gw = start(live, jwks)
    signed = live_token(sub="sdk-agent").decode()

    async def use() -> list[str]:
        async with (
            create_mcp_http_client(headers={"Authorization": f"Bearer {signed}"}) as http,
            Client(
                streamable_http_client(gw.url + "/mcp", http_client=http), mode=mode, read_timeout_seconds=30
            ) as client,
        ):
            listed = await client.list_tools()
            return [tool.name for tool in listed.tools]

    names = await in_thread(use())
    assert "fx.echo" in names
    if mode != "legacy":  # (a legacy client deletes its session as it leaves)
        _, sessions = await gw.request("GET", "/sessions")
        assert {session["owner"] for session in sessions.values()} == {"corp:sdk-agent"}


@pytest_twisted.ensureDeferred
async def test_a_verified_token_is_verified_once(jwks: JwksEndpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens, clock = verifier(issuer(jwks_url=jwks.url, leeway=0))
    decoded: list[bytes] = []
    real = jwt.decode

    def counting(value: Any, *args: Any, **kwargs: Any) -> Any:
        decoded.append(value)
        return real(value, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    signed = token(exp=int(NOW) + 100)
    for _ in range(5):
        assert (await tokens.verify(signed)).principal is not None
    assert len(decoded) == 1
    # Until it expires: then it is refused, not remembered.
    clock.advance(100)
    assert (await tokens.verify(signed)).reason == "expired"
    assert len(decoded) == 1


@pytest_twisted.ensureDeferred
async def test_concurrent_first_tokens_share_one_fetch(jwks: JwksEndpoint) -> None:
    tokens, _ = verifier(issuer(jwks_url=jwks.url))
    verdicts = await gatherResults([tokens.verify(token(sub=f"u{n}")) for n in range(10)])
    assert all(verdict.principal is not None for verdict in verdicts)
    assert jwks.requests == 1


@pytest_twisted.ensureDeferred
async def test_the_jwks_is_fetched_at_start_not_when_built(jwks: JwksEndpoint, tmp_path: Path) -> None:
    raw = {
        "server": {"issuers": {"corp": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks.url}}},
        "services": {},
        "session": {"sandbox_dir": str(tmp_path / "sandbox")},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    options = Options()
    options.parseOptions(["-c", str(path), "--listen", "tcp:0:interface=127.0.0.1"])  # issuers alone suffice
    top = makeService(options)
    (service,) = [service for service in top if isinstance(service, GatewayService)]
    assert service.tokens is not None
    assert jwks.requests == 0, "makeService builds only"
    top.startService()
    try:
        corp = service.tokens.issuers["corp"].jwks
        assert corp is not None
        assert corp.fetches == 1, "started by startService"
        await corp.refresh()  # waits for the fetch under way, starts no other
        assert (corp.fetches, jwks.requests) == (1, 1)
        assert [kid for kid, _ in corp.keys] == ["k1"]
    finally:
        await top.stopService()
