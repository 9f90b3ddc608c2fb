"""
Supervision faults end to end, with real children on a real socket: a child
that dies at start although its era is known, a tool list that never comes,
a child that closes stdout and keeps running, a warm child that keeps dying,
a gateway stopped while a child is starting, and a start that fails after the
client has gone.  The C{live} fixture fails a test that leaves a child behind.
"""

from __future__ import annotations

import time
from typing import Any

import pytest_twisted
from twisted.internet.defer import ensureDeferred

from .conftest import fixture_service, sleep, wait_until


@pytest_twisted.ensureDeferred
async def test_known_modern_child_dying_at_start_is_503_with_backoff(live: Any) -> None:
    # protocol "modern" skips the era probe, never the handshake: a child that
    # exits at once is a failed start (503, backoff), not a 502 on each call.
    gw = live({"fx": fixture_service("--modern", "--exit-at-start", "3", protocol="modern", backoff_initial=5)})
    service = gw.gateway.services["fx"]
    response, body = await gw.call("fx", "echo", "s1", {"text": "x"})
    assert (response.code, body["code"]) == (503, "service_unavailable"), body
    assert "exited with status 3" in body["error"]
    assert body["exit_status"] == 3
    response, body = await gw.call("fx", "echo", "s1", {"text": "x"})
    assert response.code == 503
    assert service.spawns == 1, "backing off: no second spawn"
    assert response.headers.getRawHeaders(b"retry-after") is not None


@pytest_twisted.ensureDeferred
async def test_known_modern_child_handshakes_and_serves(live: Any) -> None:
    gw = live({"fx": fixture_service("--modern", protocol="modern")})
    response, body = await gw.call("fx", "echo", "s1", {"text": "hi"})
    assert (response.code, body["result"]) == (200, "hi")
    _, services = await gw.request("GET", "/services")
    assert services["fx"]["protocol"] == "modern"
    await gw.request("DELETE", "/sessions/s1")


@pytest_twisted.ensureDeferred
async def test_tool_list_that_never_comes_is_504_and_does_not_wedge(live: Any) -> None:
    gw = live({"slow": fixture_service("--tools-sleep", "60", call_timeout=0.5)})
    for _ in range(2):
        started = time.monotonic()
        response, body = await gw.request("GET", "/services/slow/tools")
        assert (response.code, body["code"]) == (504, "call_timeout"), body
        assert "did not list its tools" in body["error"]
        assert time.monotonic() - started < 5
    # Each lister child is closed after its failed listing.
    await wait_until(lambda: not gw.children())


@pytest_twisted.ensureDeferred
async def test_child_closing_stdout_is_502_without_waiting_for_the_call_timeout(live: Any) -> None:
    gw = live({"fx": fixture_service("--close-stdout-on-call", call_timeout=30)})
    started = time.monotonic()
    response, body = await gw.call("fx", "echo", "s1", {"text": "x"})
    took = time.monotonic() - started
    assert (response.code, body["code"]) == (502, "child_failed"), body
    assert "closed its stdout" in body["error"]
    assert took < 10, took
    await gw.request("DELETE", "/sessions/s1")


@pytest_twisted.ensureDeferred
async def test_warm_child_that_keeps_dying_backs_off(live: Any) -> None:
    gw = live({"fx": fixture_service("--exit-after-handshake", "0.05", prewarm=1, backoff_initial=0.5, backoff_max=8)})
    service = gw.gateway.services["fx"]
    await sleep(3)
    # Backing off from 0.5 s and doubling, three seconds hold at most five
    # starts (a respawn loop without backoff makes dozens).
    assert service.spawns <= 5, service.spawns
    await wait_until(lambda: service.spawns >= 2)  # it does start again
    assert service.describe()["state"] in ("failing", "ready", "idle")
    assert "warm pool" in (service.last_failure.message if service.last_failure else "")


@pytest_twisted.ensureDeferred
async def test_stopping_while_a_child_starts_ends_it_at_once(live: Any) -> None:
    gw = live({"mute": fixture_service("--no-handshake-reply", handshake_timeout=60, discover_timeout=0.2)})
    call = ensureDeferred(gw.call("mute", "echo", "s1", {"text": "x"}))
    await wait_until(lambda: len(gw.children()) == 1)
    started = time.monotonic()
    await gw.gateway.stop()
    assert time.monotonic() - started < 5
    assert gw.children() == []
    response, body = await call
    assert (response.code, body["code"]) == (503, "service_unavailable"), body
    assert "shutting down" in body["error"]
    assert response.headers.getRawHeaders(b"retry-after") == [b"1"]
    assert len(gw.gateway.sessions) == 0


@pytest_twisted.ensureDeferred
async def test_failed_start_after_the_client_left_leaves_no_session(live: Any) -> None:
    gw = live({"slow": fixture_service("--start-delay", "0.5", "--exit-at-start", "1")})
    call = ensureDeferred(gw.call("slow", "echo", "gone", {"text": "x"}))
    await wait_until(lambda: len(gw.gateway.sessions) == 1)
    call.cancel()  # the client hangs up while the child is starting
    hung_up: list[Any] = []
    call.addErrback(hung_up.append)
    assert hung_up, "the cancelled request fails at once"
    service = gw.gateway.services["slow"]
    await wait_until(lambda: service.start_failures == 1)
    assert len(gw.gateway.sessions) == 0
    _, sessions = await gw.request("GET", "/sessions")
    assert "gone" not in sessions
