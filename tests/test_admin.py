"""
The admin dashboard's parts without a browser: the browser sessions and the
call numbers (units, on a L{Clock}), and its routes over real HTTP against a
gateway with real children (login, cookie, CSRF, restart, stats, assets).
The browser itself is in L{tests.test_admin_browser}.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest_twisted
import treq
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from mcpgateway.calls import CallRecord, CallRequest
from mcpgateway.observe.callstats import MAX_SAMPLES, CallStats
from mcpgateway.observe.security import RecentSecurityEvents, security_event
from mcpgateway.policy.auth import Principal, hash_password
from mcpgateway.policy.browser import BrowserSessions

from .conftest import AUTH, fixture_service, wait_until

ADMIN = Principal("root", "admin")
AGENT = ("bot", "bot-password")


# -- browser sessions --------------------------------------------------------------------------


def test_browser_session_lives_while_used_and_ends_on_logout() -> None:
    clock = Clock()
    sessions = BrowserSessions(clock, idle=60, lifetime=300)
    session_id, session = sessions.create(ADMIN)
    assert sessions.get(session_id) is session
    assert session.principal == ADMIN
    assert session.csrf_matches(session.csrf)
    assert not session.csrf_matches(session.csrf + "x")
    assert not session.csrf_matches(None)
    assert sessions.get(session_id + "x") is None
    clock.advance(59)
    assert sessions.get(session_id) is session  # used: idle time starts again
    clock.advance(59)
    assert sessions.get(session_id) is session
    assert sessions.end(session_id)
    assert sessions.get(session_id) is None
    assert not sessions.end(session_id)


def test_browser_session_expires_idle_and_at_its_lifetime() -> None:
    clock = Clock()
    sessions = BrowserSessions(clock, idle=60, lifetime=300)
    idle_id, _ = sessions.create(ADMIN)
    busy_id, _ = sessions.create(ADMIN)
    for _ in range(5):
        clock.advance(50)
        assert sessions.get(busy_id) is not None
    assert sessions.get(idle_id) is None
    clock.advance(51)
    assert sessions.get(busy_id) is None, "older than its lifetime, however used"
    assert len(sessions) == 0


def test_browser_sessions_are_bounded_and_keep_no_ids() -> None:
    clock = Clock()
    sessions = BrowserSessions(clock, limit=3)
    ids = []
    for _ in range(3):
        ids.append(sessions.create(ADMIN)[0])
        clock.advance(1)
    assert sessions.get(ids[0]) is not None  # now the most recently used
    ids.append(sessions.create(ADMIN)[0])
    assert len(sessions) == 3
    assert sessions.get(ids[1]) is None, "the least recently used went first"
    assert all(session_id.encode() not in repr(vars(sessions)).encode() for session_id in ids)


# -- call numbers --------------------------------------------------------------------------


def record(stats: CallStats, service: str, seconds: float, outcome: str = "ok", status: int = 200) -> None:
    request = CallRequest(ADMIN, service, "tool", {}, "s1", "rest")
    stats.record(CallRecord(request, 1000.0, seconds, outcome, status))


def test_call_stats_rate_percentiles_and_errors() -> None:
    clock = Clock()
    clock.advance(1000)
    stats = CallStats(clock, window=60, bucket=5)
    for millis in range(1, 101):
        record(stats, "todo", millis / 1000)
    record(stats, "todo", 0.5, "child_failed", 502)
    record(stats, "todo", 0.001, "tool_error")
    clock.advance(7)
    record(stats, "other", 0.002)
    view = stats.snapshot(["idle", "other", "todo"], recent=30)
    todo = view["services"]["todo"]
    assert todo["calls"] == 102
    assert todo["rate"] == round(102 / 30, 3)
    assert todo["p50_ms"] == 50.0
    assert todo["p99_ms"] == 100.0
    assert todo["error_rate"] == round(2 / 102, 4)
    assert view["services"]["idle"] == {
        "calls": 0,
        "rate": 0.0,
        "error_rate": 0.0,
        "p50_ms": None,
        "p99_ms": None,
        "series": view["services"]["idle"]["series"],
    }
    series = todo["series"]
    assert len(series) == 12, "one point per bucket of the window"
    assert [point[1] for point in series if point[1]] == [102]
    assert [point[1] for point in view["services"]["other"]["series"] if point[1]] == [1]
    assert series[-1][0] <= clock.seconds() < series[-1][0] + 5
    errors = stats.recent_errors()
    assert [(error["outcome"], error["status"]) for error in errors] == [("tool_error", 200), ("child_failed", 502)]
    assert errors[0]["principal"] == "root"
    # Out of the window: forgotten.
    clock.advance(61)
    record(stats, "todo", 0.003)
    todo = stats.snapshot(["todo"], recent=30)["services"]["todo"]
    assert todo["calls"] == 1
    assert sum(point[1] for point in todo["series"]) == 1


def test_call_stats_keep_bounded_samples_per_bucket() -> None:
    clock = Clock()
    stats = CallStats(clock)
    for _ in range(MAX_SAMPLES * 3):
        record(stats, "todo", 0.01)
    todo = stats.snapshot(["todo"])["services"]["todo"]
    assert todo["calls"] == MAX_SAMPLES * 3, "counted, though not every latency is kept"
    assert len(stats._buckets["todo"][-1].seconds) == MAX_SAMPLES


def test_recent_security_events() -> None:
    events = RecentSecurityEvents(size=2)
    security_event("ignored", address="-", principal=None, route="-")
    events.start()
    try:
        for n in range(3):
            security_event("auth_failure", address="10.0.0.1", principal=None, route=f"GET /{n}", reason="x")
    finally:
        events.stop()
    security_event("ignored", address="-", principal=None, route="-")
    recent = events.recent()
    assert [event["route"] for event in recent] == ["GET /2", "GET /1"]
    assert recent[0]["event"] == "auth_failure"
    assert recent[0]["reason"] == "x"
    assert recent[0]["principal"] is None


# -- over HTTP ---------------------------------------------------------------------------------


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def start(live: Callable[..., Any]) -> Any:
    agent = {"name": AGENT[0], "role": "agent", "password_hash": hash_password(AGENT[1])}
    return live({"fx": fixture_service()}, server={"principals": [agent]})


async def post_login(
    gateway: Any, body: bytes, origin: str | None = "self", kind: bytes = b"application/x-www-form-urlencoded"
) -> tuple[Any, str]:
    sent = {b"Content-Type": [kind]}
    if origin is not None:
        sent[b"Origin"] = [(gateway.url if origin == "self" else origin).encode()]
    response = await treq.post(gateway.url + "/admin/login", data=body, headers=sent, allow_redirects=False)
    return response, (await treq.content(response)).decode()


async def log_in(gateway: Any) -> tuple[str, str]:
    """
    @return: The session cookie (C{name=value}) and the page's CSRF token.
    """
    response, _ = await post_login(gateway, f"user={AUTH[0]}&password={AUTH[1]}".encode())
    assert response.code == 303
    cookie = response.headers.getRawHeaders(b"set-cookie")[0].decode().split(";")[0]
    page = await treq.get(gateway.url + "/admin", headers={b"Cookie": [cookie.encode()]})
    text = (await treq.content(page)).decode()
    assert page.code == 200
    token = text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    return cookie, token


@pytest_twisted.ensureDeferred
async def test_login_form_and_its_refusals(live: Callable[..., Any]) -> None:
    gateway = start(live)
    response = await treq.get(gateway.url + "/admin")
    text = (await treq.content(response)).decode()
    assert response.code == 200
    assert 'action="/admin/login"' in text
    csp = response.headers.getRawHeaders(b"content-security-policy")[0]
    assert b"script-src 'self'" in csp and b"unsafe-inline" not in csp and b"default-src 'none'" in csp
    assert response.headers.getRawHeaders(b"x-frame-options") == [b"DENY"]

    response, text = await post_login(gateway, f"user={AUTH[0]}&password=wrong".encode())
    assert response.code == 401
    assert "wrong user name, password or token" in text
    assert not response.headers.hasHeader(b"www-authenticate"), "no browser dialog over the form"
    assert not response.headers.hasHeader(b"set-cookie")

    response, text = await post_login(gateway, f"user={AGENT[0]}&password={AGENT[1]}".encode())
    assert response.code == 403
    assert "for admin principals only" in text
    assert not response.headers.hasHeader(b"set-cookie")

    for origin in (None, "http://evil.example", "null"):
        response, text = await post_login(gateway, f"user={AUTH[0]}&password={AUTH[1]}".encode(), origin)
        assert response.code == 403, origin
        assert not response.headers.hasHeader(b"set-cookie")

    response, text = await post_login(gateway, b"user=&password=")
    assert response.code == 400
    response, text = await post_login(gateway, json.dumps({"user": "x"}).encode(), kind=b"application/json")
    assert (response.code, json.loads(text)["code"]) == (400, "invalid_request")

    response, _ = await post_login(gateway, f"user={AUTH[0]}&password={AUTH[1]}".encode())
    assert response.code == 303
    assert response.headers.getRawHeaders(b"location") == [b"/admin"]
    (cookie,) = response.headers.getRawHeaders(b"set-cookie")
    attributes = [part.strip() for part in cookie.decode().split(";")]
    assert attributes[0].startswith("mcpgateway_admin=") and len(attributes[0]) > 50
    assert {"Path=/", "HttpOnly", "Secure", "SameSite=Strict", "Max-Age=43200"} <= set(attributes)


@pytest_twisted.ensureDeferred
async def test_cookie_reads_the_api_and_writes_only_with_csrf(live: Callable[..., Any]) -> None:
    gateway = start(live)
    response, body = await gateway.call("fx", "echo", "s1", {"text": "hi"})
    assert response.code == 200, body
    cookie, token = await log_in(gateway)
    with_cookie = {b"Cookie": [cookie.encode()]}

    # The JSON API, as the cookie's principal.
    response, sessions = await gateway.request("GET", "/sessions", auth=None, headers=with_cookie)
    assert (response.code, list(sessions)) == (200, ["s1"])
    response, stats = await gateway.request("GET", "/admin/stats", auth=None, headers=with_cookie)
    assert response.code == 200
    assert stats["services"]["fx"]["children"] == 1
    assert stats["calls"]["services"]["fx"]["calls"] == 1
    assert stats["services"]["fx"]["state"] == "ready"

    # Changes: the token and the gateway's own Origin, or 403.
    own = gateway.url.encode()
    refusals = [
        {},
        {b"Origin": [own]},
        {b"X-CSRF-Token": [token.encode()]},
        {b"Origin": [b"http://evil.example"], b"X-CSRF-Token": [token.encode()]},
        {b"Origin": [own], b"X-CSRF-Token": [token.encode() + b"x"]},
    ]
    for extra in refusals:
        response, body = await gateway.request("DELETE", "/sessions/s1", auth=None, headers={**with_cookie, **extra})
        assert (response.code, body["code"]) == (403, "csrf_failed"), extra
    assert len(gateway.children()) == 1
    allowed = {**with_cookie, b"Origin": [own], b"X-CSRF-Token": [token.encode()]}
    response, body = await gateway.request("DELETE", "/sessions/s1", auth=None, headers=allowed)
    assert (response.code, body["session_id"]) == (200, "s1")
    await wait_until(lambda: not gateway.children())

    # Log out: the cookie is worth nothing afterwards, and its 401 has no
    # challenge (the page's script goes back to the login form instead).
    response, body = await gateway.request("POST", "/admin/logout", auth=None, headers=allowed)
    assert (response.code, body["message"]) == (200, "logged out")
    assert "Max-Age=0" in response.headers.getRawHeaders(b"set-cookie")[0].decode()
    response, body = await gateway.request("GET", "/admin/stats", auth=None, headers=with_cookie)
    assert (response.code, body["code"]) == (401, "unauthorized")
    assert not response.headers.hasHeader(b"www-authenticate")
    response = await treq.get(gateway.url + "/admin", headers=with_cookie)
    assert 'action="/admin/login"' in (await treq.content(response)).decode()


@pytest_twisted.ensureDeferred
async def test_restart_replaces_session_children(live: Callable[..., Any]) -> None:
    gateway = start(live)
    for session in ("a", "b"):
        response, body = await gateway.call("fx", "counter", session)
        assert (response.code, body["result"]) == (200, "1"), body
    before = set(gateway.children())
    assert len(before) == 2

    response, body = await gateway.request("POST", "/admin/services/fx/restart", auth=AGENT)
    assert (response.code, body["code"]) == (403, "forbidden")
    response, body = await gateway.request("POST", "/admin/services/nope/restart")
    assert (response.code, body["code"]) == (404, "service_not_found")
    response, body = await gateway.request("POST", "/admin/services/no%20pe/restart")
    assert (response.code, body["code"]) == (400, "invalid_service_name")
    response, body = await gateway.request("GET", "/admin/stats", auth=AGENT)
    assert (response.code, body["code"]) == (403, "forbidden")

    response, body = await gateway.request("POST", "/admin/services/fx/restart")
    assert response.code == 200
    assert body == {"service": "fx", "session_children_closed": 2, "pool_children_closed": 0}
    await wait_until(lambda: not gateway.children())
    response, body = await gateway.call("fx", "counter", "a")
    assert (response.code, body["result"], body["session_restarted"]) == (200, "1", True)
    assert not set(gateway.children()) & before
    response, stats = await gateway.request("GET", "/admin/stats")
    assert stats["services"]["fx"]["restarts"] == 1
    response, sessions = await gateway.request("GET", "/sessions")
    assert set(sessions) == {"a", "b"}, "sessions stay open"


@pytest_twisted.ensureDeferred
async def test_dashboard_assets(live: Callable[..., Any]) -> None:
    gateway = start(live)
    for name, kind in (("admin.js", b"text/javascript"), ("admin.css", b"text/css"), ("favicon.svg", b"image/svg")):
        response = await treq.get(f"{gateway.url}/admin/static/{name}")
        assert response.code == 200
        assert response.headers.getRawHeaders(b"content-type")[0].startswith(kind)
        assert len(await treq.content(response)) > 100
    for name in ("other.js", "..%2Fpages.py", "pages.py"):
        response, body = await gateway.request("GET", f"/admin/static/{name}", auth=None)
        assert response.code == 404, name
        assert body["code"] == "not_found"


@pytest_twisted.ensureDeferred
async def test_restart_fails_the_call_in_flight(live: Callable[..., Any]) -> None:
    gateway = start(live)
    response, body = await gateway.call("fx", "counter", "slow")
    assert response.code == 200
    waiting = ensureDeferred(gateway.call("fx", "sleep", "slow", {"seconds": 30}))
    sessions = gateway.gateway.sessions
    await wait_until(lambda: bool((session := sessions.get("slow")) is not None and session.calls))
    response, body = await gateway.request("POST", "/admin/services/fx/restart")
    assert (response.code, body["session_children_closed"]) == (200, 1)
    response, body = await waiting
    assert (response.code, body["code"]) == (502, "child_failed")
    # As after a crash during a call: the session held nothing else, so it
    # was forgotten, and the next call opens it afresh.
    assert gateway.gateway.sessions.get("slow") is None
    response, body = await gateway.call("fx", "counter", "slow")
    assert (response.code, body["result"], body["session_restarted"]) == (200, "1", False)


@pytest_twisted.ensureDeferred
async def test_login_guessing_is_limited(live: Callable[..., Any]) -> None:
    gateway = live({"fx": fixture_service()}, rate_limiting={"auth_failure_limit": "3 per minute"})
    codes = []
    for _ in range(4):
        response, text = await post_login(gateway, f"user={AUTH[0]}&password=guess".encode())
        codes.append(response.code)
    assert codes == [401, 401, 401, 429]
    assert "too many attempts" in text
    assert int(response.headers.getRawHeaders(b"retry-after")[0]) >= 1
    # The right password gains nothing while the budget is used up.
    response, text = await post_login(gateway, f"user={AUTH[0]}&password={AUTH[1]}".encode())
    assert response.code == 429
    assert not response.headers.hasHeader(b"set-cookie")
