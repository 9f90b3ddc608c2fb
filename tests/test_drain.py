"""
The graceful drain: the plain L{Drain} object on a L{Clock}, then C{POST
/admin/drain}, C{/health} and both doors of a live gateway with real
children.  The SIGTERM path through twistd is in C{test_twistd.py}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock

from mcpgateway.config import parse_config
from mcpgateway.drain import Drain
from mcpgateway.errors import ServiceUnavailable
from mcpgateway.gateway import Gateway
from mcpgateway.policy.auth import ADMIN, Principal, hash_token

from .conftest import fixture_service, sleep, wait_until
from .test_mcp_front import LEGACY, POST_HEADERS, http, initialize, legacy_headers

AGENT_TOKEN = "agent-token-0123456789"
ADMIN_PRINCIPAL = Principal("admin", ADMIN)


# -- the plain object, on a Clock ---------------------------------------------------------------


def _drain(tmp_path: Path, timeout: float = 30.0) -> tuple[Drain, Gateway, Clock]:
    config = parse_config(
        {
            "server": {"auth_user": "admin", "auth_password": "s3cret"},
            "session": {"sandbox_dir": str(tmp_path), "drain_timeout": timeout},
        }
    )
    clock = Clock()
    gateway = Gateway(config, None, clock)  # type: ignore[arg-type] # no services: nothing spawns
    return Drain(gateway, clock, config.session.drain_timeout), gateway, clock


def _open(gateway: Gateway, session_id: str) -> None:
    gateway.open_session(session_id, ADMIN_PRINCIPAL, 300, {})


def _fired(d: Deferred[Any]) -> bool:
    done: list[object] = []
    d.addBoth(done.append)
    return bool(done)


def test_a_drain_refuses_new_sessions_and_waits_for_live_ones(tmp_path: Path) -> None:
    drain, gateway, clock = _drain(tmp_path)
    _open(gateway, "a")
    _open(gateway, "b")
    assert (drain.draining, gateway.health()["status"], drain.describe()) == (False, "healthy", {})

    drained = drain.drain()
    assert drain.draining and gateway.health()["status"] == "draining"
    with pytest.raises(ServiceUnavailable) as refused:
        _open(gateway, "c")
    assert (refused.value.status, refused.value.code, refused.value.retry_after) == (503, "draining", 1)
    _open(gateway, "a")  # a live session is used as before
    assert drain.describe() == {"drained": False, "sessions": 2, "drain_deadline": "1970-01-01T00:00:30.000Z"}

    gateway.close_session("a", ADMIN_PRINCIPAL)
    clock.advance(10)
    assert not _fired(drained)
    gateway.close_session("b", ADMIN_PRINCIPAL)
    assert not drained.called, "one turn later: the close is complete first"
    clock.advance(0)
    assert drained.called and drain.drained
    assert drain.describe()["sessions"] == 0
    assert not clock.getDelayedCalls(), "the deadline was cancelled"


def test_the_deadline_closes_the_sessions_left(tmp_path: Path) -> None:
    drain, gateway, clock = _drain(tmp_path, timeout=5)
    _open(gateway, "a")
    closed: list[str] = []
    gateway.session_closed.append(lambda session: closed.append(session.id))
    drained = drain.drain()
    clock.advance(4.9)
    assert not drained.called and closed == []
    clock.advance(0.1)
    assert drained.called and closed == ["a"]
    assert len(gateway.sessions) == 0


def test_a_second_drain_may_only_bring_the_deadline_closer(tmp_path: Path) -> None:
    drain, gateway, clock = _drain(tmp_path, timeout=60)
    _open(gateway, "a")
    first = drain.drain()
    second = drain.drain(120)  # later: ignored
    assert drain.deadline == 60
    third = drain.drain(10)
    assert drain.deadline == 10
    assert [call.getTime() for call in clock.getDelayedCalls()] == [10]
    clock.advance(10)
    assert first.called and second.called and third.called


def test_finish_cuts_the_drain_short_and_does_nothing_before_it(tmp_path: Path) -> None:
    drain, gateway, clock = _drain(tmp_path)
    _open(gateway, "a")
    drain.finish()  # not draining: nothing happens
    assert len(gateway.sessions) == 1 and not drain.draining
    drained = drain.drain()
    drain.finish()
    clock.advance(0)
    assert drained.called and len(gateway.sessions) == 0
    assert not clock.getDelayedCalls()


def test_a_drain_without_sessions_is_over_at_once(tmp_path: Path) -> None:
    drain, gateway, clock = _drain(tmp_path)
    drained = drain.drain()
    clock.advance(0)
    assert drained.called and drain.drained and drain.describe()["drain_deadline"] == "1970-01-01T00:00:30.000Z"
    assert not clock.getDelayedCalls()
    with pytest.raises(ServiceUnavailable):
        _open(gateway, "late")


def test_cancelling_a_wait_does_not_stop_the_drain(tmp_path: Path) -> None:
    drain, gateway, clock = _drain(tmp_path, timeout=1)
    _open(gateway, "a")
    waiting = drain.drain()
    waiting.addErrback(lambda failure: None)
    waiting.cancel()
    clock.advance(1)
    assert drain.drained and len(gateway.sessions) == 0


# -- a live gateway: the route, /health, both doors ------------------------------------------------


def _agent() -> dict[str, Any]:
    return {"principals": [{"name": "agent", "role": "agent", "token_hash": hash_token(AGENT_TOKEN)}]}


@pytest_twisted.ensureDeferred
async def test_admin_drain_over_http(live: Any) -> None:
    gw = live({"fx": fixture_service()}, server={"auth_user": "tester", **_agent()})
    response, body = await gw.request("GET", "/health", auth=None)
    assert (response.code, body["status"]) == (200, "healthy")
    response, body = await gw.call("fx", "counter", "live")
    assert (response.code, body["result"]) == (200, "1")
    mcp_session = await initialize(gw)

    # An agent may not drain the gateway; nor may anyone without credentials; only POST drains.
    agent = {"auth": None, "headers": {b"Authorization": [b"Bearer " + AGENT_TOKEN.encode()]}}
    response, body = await gw.request("POST", "/admin/drain", **agent)
    assert (response.code, body["code"]) == (403, "forbidden")
    response, body = await gw.request("POST", "/admin/drain", auth=None)
    assert (response.code, body["code"]) == (401, "unauthorized")
    response, body = await gw.request("GET", "/admin/drain")
    assert (response.code, body["code"]) == (405, "method_not_allowed")
    assert not gw.app.drain.draining

    # A call in flight when the drain starts completes.
    in_flight = ensureDeferred(gw.call("fx", "sleep", "live", {"seconds": 0.5}))
    await wait_until(lambda: bool(gw.gateway.sessions.get("live").calls))
    response, body = await gw.request("POST", "/admin/drain")
    assert response.code == 202, body
    assert body["status"] == "draining" and body["sessions"] == 2 and body["drained"] is False
    assert set(body) == {"status", "timestamp", "version", "drained", "sessions", "drain_deadline"}
    response, body = await in_flight
    assert response.code == 200, body

    response, body = await gw.request("GET", "/health", auth=None)
    assert (response.code, body["status"], body["sessions"]) == (503, "draining", 2)
    assert {"timestamp", "version"} <= set(body)

    # A new session is refused, on either door, with a safe-to-retry 503.
    response, body = await gw.call("fx", "counter", "new")
    assert (response.code, body["code"]) == (503, "draining"), body
    assert response.headers.getRawHeaders(b"retry-after") == [b"1"]
    request = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": LEGACY}}
    response, raw = await http(gw, "POST", "/mcp", request, POST_HEADERS)
    assert response.code == 503, raw
    assert response.headers.getRawHeaders(b"retry-after") == [b"1"]
    assert json.loads(raw)["error"]["data"]["reason"] == "draining", raw
    assert "new" not in gw.gateway.sessions.visible_to(ADMIN_PRINCIPAL)

    # The live sessions keep working.
    response, body = await gw.call("fx", "counter", "live")
    assert (response.code, body["result"]) == (200, "2")
    params = {"name": "fx.echo", "arguments": {"text": "j"}}
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    response, raw = await http(gw, "POST", "/mcp", call, legacy_headers(mcp_session))
    assert response.code == 200, raw
    assert json.loads(raw)["result"]["content"][0]["text"] == "j", raw

    # A second POST changes nothing; once both sessions end the process is drained.
    response, body = await gw.request("POST", "/admin/drain")
    assert (response.code, body["sessions"]) == (202, 2)
    response, _ = await gw.request("DELETE", "/sessions/live")
    assert response.code == 200
    response, _ = await http(gw, "DELETE", "/mcp", None, legacy_headers(mcp_session))
    assert response.code == 200
    response, body = await gw.request("GET", "/health", auth=None)
    assert (response.code, body["status"], body["drained"], body["sessions"]) == (503, "draining", True, 0)
    await wait_until(lambda: not gw.children(), timeout=5)


@pytest_twisted.ensureDeferred
async def test_admin_drain_deadline_closes_the_children(live: Any) -> None:
    gw = live({"fx": fixture_service()}, session={"drain_timeout": 2})
    for session in ("one", "two"):
        response, body = await gw.call("fx", "counter", session)
        assert response.code == 200, body
    assert len(gw.children()) == 2
    slow = ensureDeferred(gw.call("fx", "sleep", "one", {"seconds": 30}))
    await wait_until(lambda: bool(gw.gateway.sessions.get("one").calls))
    response, body = await gw.request("POST", "/admin/drain")
    assert (response.code, body["sessions"]) == (202, 2)
    await sleep(0.3)
    assert len(gw.gateway.sessions) == 2
    response, body = await slow  # cut at the deadline: as at a stop, a retry may go elsewhere
    assert (response.code, body["code"]) == (503, "service_unavailable"), body
    assert response.headers.getRawHeaders(b"retry-after") == [b"1"]
    assert gw.app.drain.drained
    await wait_until(lambda: not gw.children(), timeout=5)


@pytest_twisted.ensureDeferred
async def test_a_draining_gateway_does_not_refill_its_warm_pool(live: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    gw = live({"fx": fixture_service(prewarm=1)})
    service = gw.gateway.services["fx"]
    await wait_until(lambda: service.pool_size == 1)
    # The refill a taken warm child schedules comes after the drain below
    # began, however slow the call's round trip on a loaded machine.
    refill_delay = 2.0
    monkeypatch.setattr(service, "refill_pool_soon", lambda delay=0: service.pool.refill_soon(refill_delay))
    response, body = await gw.call("fx", "counter", "live")  # takes the warm child
    assert response.code == 200, body
    response, _ = await gw.request("POST", "/admin/drain")
    assert response.code == 202
    await sleep(refill_delay + 0.5)
    assert (service.pool_size, service.pool_pending) == (0, 0)
    assert len(gw.children()) == 1, "only the live session's child"
    response, body = await gw.call("fx", "counter", "live")
    assert (response.code, body["result"]) == (200, "2")
