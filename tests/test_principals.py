"""
Principals: several agents share one gateway without seeing each other's
sessions; admins see all; the seeds' single credentials still work; every
authentication failure is a security event.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.defer import ensureDeferred, gatherResults

from mcpgateway.observe.security import SecurityFile
from mcpgateway.policy.auth import hash_password, hash_token

from .conftest import AUTH, fixture_service, wait_until

ALICE = ("alice", "wonderland-\u00e9\u00e8")
BOB_TOKEN = "bob-token-0123456789"
ROOT_TOKEN = "root-token-9876543210"


def _bearer(token: str) -> dict[bytes, list[bytes]]:
    return {b"Authorization": [b"Bearer " + token.encode()]}


def _principals() -> dict[str, Any]:
    return {
        "principals": [
            {"name": "alice", "role": "agent", "password_hash": hash_password(ALICE[1], n=2**10)},
            {"name": "bob", "role": "agent", "token_hash": hash_token(BOB_TOKEN)},
            {"name": "root", "role": "admin", "token_hash": hash_token(ROOT_TOKEN)},
        ]
    }


@pytest_twisted.ensureDeferred
async def test_agents_cannot_see_each_others_sessions(live: Any) -> None:
    gw = live({"fx": fixture_service()}, server=_principals())
    bob = {"auth": None, "headers": _bearer(BOB_TOKEN)}
    root = {"auth": None, "headers": _bearer(ROOT_TOKEN)}

    response, body = await gw.request("POST", "/services/fx/call", {"tool": "counter", "session_id": "a1"}, auth=ALICE)
    assert response.code == 200, body
    response, body = await gw.request("POST", "/services/fx/call", {"tool": "counter", "session_id": "b1"}, **bob)
    assert response.code == 200, body

    _, mine = await gw.request("GET", "/sessions", auth=ALICE)
    assert set(mine) == {"a1"}
    assert mine["a1"]["owner"] == "alice"
    _, theirs = await gw.request("GET", "/sessions", **bob)
    assert set(theirs) == {"b1"}
    _, everything = await gw.request("GET", "/sessions", **root)
    assert set(everything) == {"a1", "b1"}

    # Bob can neither call into nor close Alice's session: it does not exist for him.
    response, body = await gw.request("POST", "/services/fx/call", {"tool": "counter", "session_id": "a1"}, **bob)
    assert (response.code, body["code"]) == (404, "session_not_found")
    response, body = await gw.request("DELETE", "/sessions/a1", **bob)
    assert (response.code, body["code"]) == (404, "session_not_found")
    response, body = await gw.request("POST", "/services/fx/call", {"tool": "counter", "session_id": "a1"}, auth=ALICE)
    assert body["result"] == "2", "Alice's child kept its state"

    # The admin may use and close any session.
    response, body = await gw.request("POST", "/services/fx/call", {"tool": "counter", "session_id": "a1"}, **root)
    assert body["result"] == "3"
    response, _ = await gw.request("DELETE", "/sessions/a1", **root)
    assert response.code == 200
    response, _ = await gw.request("DELETE", "/sessions/b1", **bob)
    assert response.code == 200
    await wait_until(lambda: not gw.children())


@pytest_twisted.ensureDeferred
async def test_wrong_credentials_for_principals(live: Any) -> None:
    gw = live({"fx": fixture_service()}, server=_principals())
    for auth, headers in (
        (("alice", "wrong"), {}),
        (("nobody", ALICE[1]), {}),
        (None, _bearer("not-a-token")),
        (None, {b"Authorization": [b"Basic !!!"]}),
        (None, {b"Authorization": [b"Digest abc"]}),
    ):
        response, body = await gw.request("GET", "/sessions", auth=auth, headers=headers)
        assert (response.code, body["code"]) == (401, "unauthorized")
    # The seeds' single credentials are an admin principal and keep working next to the list.
    response, _ = await gw.request("GET", "/sessions", auth=AUTH)
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_security_events_are_json_lines(live: Any, tmp_path: Path) -> None:
    path = tmp_path / "security.jsonl"
    observer = SecurityFile.open(str(path))
    try:
        gw = live({"fx": fixture_service()})
        await gw.request("GET", "/services", auth=("tester", "wrong\x1b[31m"))
        await gw.request("POST", "/services/fx/call", {"tool": "../x", "session_id": "s"})
    finally:
        from twisted.logger import globalLogPublisher

        globalLogPublisher.removeObserver(observer)
    events = [json.loads(line) for line in path.read_text().splitlines()]
    kinds = [event["event"] for event in events]
    assert kinds == ["auth_failure", "invalid_input"]
    failure, invalid = events
    assert failure["address"] == "127.0.0.1"
    assert failure["route"] == "GET /services"
    assert failure["principal"] is None
    assert failure["time"].endswith("Z")
    assert invalid["code"] == "invalid_tool_name"


@pytest_twisted.ensureDeferred
async def test_a_burst_of_guesses_costs_at_most_the_failure_budget_in_hashing(
    live: Any, hashed: list[tuple[str, bytes]]
) -> None:
    gw = live({"fx": fixture_service()}, server=_principals(), rate_limiting={"auth_failure_limit": "5 per minute"})
    guesses = [("alice", f"guess-{n}") for n in range(25)] + [("nobody", f"guess-{n}") for n in range(5)]
    answers = await gatherResults([ensureDeferred(gw.request("GET", "/sessions", auth=guess)) for guess in guesses])
    statuses = sorted(response.code for response, _ in answers)
    assert statuses == [401] * 5 + [429] * 25, statuses
    # Each attempt was counted before its hash was verified: five hashes, not thirty.
    assert len(hashed) == 5, len(hashed)
    # The right password from the same address is refused too (no oracle).
    response, body = await gw.request("GET", "/sessions", auth=ALICE)
    assert (response.code, body["code"]) == (429, "rate_limited")
    assert len(hashed) == 5


@pytest_twisted.ensureDeferred
async def test_unknown_user_costs_a_hash_like_a_known_one(live: Any, hashed: list[tuple[str, bytes]]) -> None:
    gw = live({"fx": fixture_service()}, server=_principals())
    response, _ = await gw.request("GET", "/sessions", auth=("nobody", "x"))
    assert response.code == 401
    assert len(hashed) == 1 and hashed[0][0].startswith("scrypt$")
    # A verified password is remembered: the next request costs no hash.
    for _ in range(2):
        response, _ = await gw.request("GET", "/sessions", auth=ALICE)
        assert response.code == 200
    assert len(hashed) == 2
