"""
The password-guessing defence does not lock out the right callers: once an
address has used up C{auth_failure_limit}, a strong bearer token and a
credential verified before from that address are still admitted, while a
never verified password is refused unchecked; failures are also counted per
Basic user name, so guesses at one name from a second address are refused
too; clients sending one password at once cost one hash and one attempt.
Real gateways on real sockets; the second address is 127.0.0.2 (any
127/8 address is local on Linux).
"""

from __future__ import annotations

import secrets
import threading
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.web.client import Agent

import mcpgateway.policy.auth
from mcpgateway.http.guard import user_key
from mcpgateway.policy.auth import STRONG_TOKEN_BYTES, hash_password, hash_token

from .conftest import AUTH, fixture_service, wait_until

ALICE = ("alice", "alice-password")
CAROL = ("carol", "carol-password")
WORKER_TOKEN = secrets.token_urlsafe(32)  # what python -m mcpgateway.auth token makes
SHORT_TOKEN = "short-token-0123"  # valid, but guessable: treated like a password
LIMIT = 3


def bearer(token: str) -> dict[str, Any]:
    return {"auth": None, "headers": {b"Authorization": [b"Bearer " + token.encode()]}}


def from_second_address() -> dict[str, Any]:
    """
    @return: Request arguments that connect from 127.0.0.2.
    """
    return {"agent": Agent(reactor, bindAddress=("127.0.0.2", 0))}


def start(live: Any) -> Any:
    principals = [
        {"name": "alice", "role": "agent", "password_hash": hash_password(ALICE[1], n=2**10)},
        {"name": "carol", "role": "agent", "password_hash": hash_password(CAROL[1], n=2**10)},
        {"name": "worker", "role": "agent", "token_hash": hash_token(WORKER_TOKEN)},
        {"name": "shorty", "role": "agent", "token_hash": hash_token(SHORT_TOKEN)},
    ]
    return live(
        {"fx": fixture_service()},
        server={"principals": principals},
        rate_limiting={"auth_failure_limit": f"{LIMIT} per minute"},
    )


def failures(gw: Any) -> float:
    """
    @return: C{mcpgateway_auth_failures_total} of C{gw}.
    """
    value = gw.app.metrics.registry.get_sample_value("mcpgateway_auth_failures_total")
    return float(value or 0)


async def use_up(gw: Any, left: int, user: str = "nobody") -> None:
    """
    Use up the budget of 127.0.0.1 (and of C{user}) with C{left} wrong
    passwords (401), then check that one more is refused (429).
    """
    for number in range(left):
        response, body = await gw.request("GET", "/sessions", auth=(user, f"guess-{number}"))
        assert (response.code, body["code"]) == (401, "unauthorized")
    response, body = await gw.request("GET", "/sessions", auth=(user, "one-more"))
    assert (response.code, body["code"]) == (429, "rate_limited")


@pytest_twisted.ensureDeferred
async def test_the_right_callers_are_admitted_from_a_locked_out_address(
    live: Any, hashed: list[tuple[str, bytes]]
) -> None:
    gw = start(live)
    # Live callers of this host, before a misconfigured neighbour starts
    # failing.  Alice's first request needed a hash: an attempt, counted.
    for auth in (ALICE, AUTH):
        response, body = await gw.request("GET", "/sessions", auth=auth)
        assert response.code == 200, body
    await use_up(gw, LIMIT - 1)
    before = list(hashed)

    # (a) A valid strong bearer token is checked first and admitted, every time.
    for _ in range(LIMIT + 2):
        response, body = await gw.request("GET", "/sessions", **bearer(WORKER_TOKEN))
        assert response.code == 200, body
    # (b) Credentials verified from this address before: admitted, no hash.
    for auth in (ALICE, AUTH):
        for _ in range(2):
            response, body = await gw.request("GET", "/sessions", auth=auth)
            assert response.code == 200, body
    # (c) A right password never verified from here is refused unchecked (no
    # oracle), and so is a valid token too short to be unguessable.
    assert len(SHORT_TOKEN) < STRONG_TOKEN_BYTES
    for kwargs in ({"auth": CAROL}, bearer(SHORT_TOKEN), {"auth": None}):
        response, body = await gw.request("GET", "/sessions", **kwargs)
        assert (response.code, body["code"]) == (429, "rate_limited"), kwargs
        assert int(response.headers.getRawHeaders(b"retry-after")[0]) >= 1
    assert hashed == before, "nothing was hashed while locked out"

    # From another address, carol is not locked out: the budget was 127.0.0.1's.
    response, body = await gw.request("GET", "/sessions", auth=CAROL, **from_second_address())
    assert response.code == 200, body


@pytest_twisted.ensureDeferred
async def test_guessing_one_user_name_is_limited_across_addresses(live: Any, hashed: list[tuple[str, bytes]]) -> None:
    gw = start(live)
    response, _ = await gw.request("GET", "/sessions", auth=ALICE)
    assert response.code == 200
    await use_up(gw, LIMIT - 1, "alice")
    hashes = len(hashed)
    assert hashes == LIMIT

    second = from_second_address()
    # 127.0.0.2 has its own, untouched address budget...
    response, body = await gw.request("GET", "/sessions", auth=("carol", "wrong"), **second)
    assert (response.code, body["code"]) == (401, "unauthorized")
    assert len(hashed) == hashes + 1
    # ...but alice's name has none left: a guess is refused before hashing,
    # and so is her right password, never verified from there.
    for auth in (("alice", "guess-from-elsewhere"), ALICE):
        response, body = await gw.request("GET", "/sessions", auth=auth, **second)
        assert (response.code, body["code"]) == (429, "rate_limited"), auth
    assert len(hashed) == hashes + 1
    # Alice herself, verified from 127.0.0.1 before, is not locked out.
    response, body = await gw.request("GET", "/sessions", auth=ALICE)
    assert response.code == 200, body
    assert len(hashed) == hashes + 1


@pytest_twisted.ensureDeferred
async def test_a_wrong_strong_token_is_checked_and_counted(live: Any) -> None:
    gw = start(live)
    wrong = secrets.token_urlsafe(32)
    for number in range(LIMIT):
        response, body = await gw.request("GET", "/sessions", **bearer(wrong))
        assert (response.code, body["code"]) == (401, "unauthorized")
        assert response.headers.getRawHeaders(b"www-authenticate")
        remaining = str(LIMIT - 1 - number).encode()
        assert response.headers.getRawHeaders(b"x-ratelimit-remaining") == [remaining]
    assert failures(gw) == LIMIT
    # Counted against the address: a password from it is now refused unchecked.
    response, body = await gw.request("GET", "/sessions", auth=AUTH)
    assert (response.code, body["code"]) == (429, "rate_limited")
    # A further wrong token is still checked (a failure), then refused as over budget...
    response, body = await gw.request("GET", "/sessions", **bearer(wrong))
    assert (response.code, body["code"]) == (429, "rate_limited")
    assert response.headers.getRawHeaders(b"retry-after")
    assert failures(gw) == LIMIT + 1
    # ...while the right one from the same address is admitted.
    response, body = await gw.request("GET", "/sessions", **bearer(WORKER_TOKEN))
    assert response.code == 200, body
    rate_limited = gw.app.metrics.registry.get_sample_value("mcpgateway_rate_limited_total", {"group": "auth_failure"})
    assert rate_limited == 2


@pytest_twisted.ensureDeferred
async def test_clients_starting_at_once_cost_one_hash_and_one_attempt(
    live: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    verified: list[bytes] = []
    real = mcpgateway.policy.auth._verify_password

    def held(encoded: str, password: bytes) -> bool:  # in a thread: waiting blocks no reactor
        verified.append(password)
        release.wait(10)
        return real(encoded, password)

    monkeypatch.setattr(mcpgateway.policy.auth, "_verify_password", held)
    gw = start(live)
    authenticator = gw.app.guard.authenticator
    arrived: list[bytes | None] = []
    authenticate = authenticator.authenticate

    def counting(header: bytes | None, address: str | None = None) -> Any:
        arrived.append(header)
        return authenticate(header, address)

    monkeypatch.setattr(authenticator, "authenticate", counting)
    clients = 2 * LIMIT  # more than the budget: each counted as an attempt would be refused
    try:
        requests = [ensureDeferred(gw.request("GET", "/sessions", auth=ALICE)) for _ in range(clients)]
        # All are waiting for the one hash (or some were answered: a failure).
        await wait_until(lambda: len(arrived) == clients or any(request.called for request in requests))
    finally:
        release.set()
    answers = await gatherResults(requests)
    assert [response.code for response, _ in answers] == [200] * clients
    assert len(verified) == 1, "the hash was verified once for all of them"
    # One attempt was counted: the address has all but one of its budget left.
    await use_up(gw, LIMIT - 1)


def test_user_keys_stay_short_and_plain() -> None:
    assert user_key(b"alice") == "user:alice"
    assert user_key(b"ops@example.com") == "user:ops@example.com"
    odd = [b"", b"a" * 129, b"a" * 100_000, b"a/b", b"a%2Fb", "jürgen".encode(), b"\xff\x00", b"user:x"]
    keys = [user_key(name) for name in odd]
    assert len(set(keys)) == len(odd), "different names, different budgets"
    for key in keys:
        assert key.startswith("user-sha256:") and len(key) == len("user-sha256:") + 32
        assert key.isascii() and "/" not in key and "%" not in key
    assert user_key(b"a" * 100_000) == user_key(b"a" * 100_000)
