"""
Observability and the warm pool: GET /metrics in Prometheus text format,
labels only from configuration and declared tools, and C{prewarm} children
that make a session's first call cost about a warm call.
"""

from __future__ import annotations

import re
from typing import Any

import pytest_twisted

from .conftest import fixture_service, wait_until


def _sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest_twisted.ensureDeferred
async def test_metrics_text(live: Any) -> None:
    gw = live({"fx": fixture_service(), "broken": fixture_service("--exit-at-start", "2")})
    await gw.request("GET", "/services/fx/tools")
    await gw.call("fx", "echo", "m1", {"text": "x"})
    await gw.call("fx", "fail", "m1")
    await gw.call("fx", "no_such_tool_xyz", "m1")
    await gw.call("broken", "echo", "m2")
    await gw.request("GET", "/services", auth=("tester", "wrong"))
    # The tool lister's child is closed in the background: the session's is left.
    await wait_until(lambda: len(gw.gateway.services["fx"].children) == 1)

    response, text = await gw.request("GET", "/metrics")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain; version=0.0.4")
    text = text.decode() if isinstance(text, bytes) else text
    assert _sample(text, "mcpgateway_tool_call_seconds_count", service="fx", tool="echo", outcome="ok") == 1
    assert _sample(text, "mcpgateway_tool_call_seconds_count", service="fx", tool="fail", outcome="tool_error") == 1
    assert "no_such_tool_xyz" not in text, "undeclared tool names never become labels"
    assert _sample(text, "mcpgateway_tool_call_seconds_count", service="fx", tool="other") == 1
    unavailable = _sample(
        text, "mcpgateway_tool_call_seconds_count", service="broken", tool="other", outcome="service_unavailable"
    )
    assert unavailable == 1
    assert _sample(text, "mcpgateway_sessions") == 1
    assert _sample(text, "mcpgateway_children", service="fx") == 1
    assert _sample(text, "mcpgateway_spawns_total", service="fx") == 2  # the tool lister and the session's child
    assert _sample(text, "mcpgateway_start_failures_total", service="broken") == 1
    assert _sample(text, "mcpgateway_service_backoff", service="broken") == 1
    assert _sample(text, "mcpgateway_auth_failures_total") == 1
    assert _sample(text, "mcpgateway_handshake_seconds_count", service="fx") == 2
    assert _sample(text, "mcpgateway_http_requests_total", route="/services/<name>/call", method="POST", status="200")
    assert _sample(text, "mcpgateway_http_requests_total", route="/services", method="GET", status="401") == 1
    response, _ = await gw.request("GET", "/metrics", auth=None)
    assert response.code == 401


@pytest_twisted.ensureDeferred
async def test_crash_and_restart_are_counted(live: Any) -> None:
    gw = live({"fx": fixture_service("--stderr-flood", "500")})
    await gw.call("fx", "echo", "s", {"text": "x"})
    await gw.call("fx", "crash", "s")
    await gw.call("fx", "echo", "s", {"text": "x"})
    _, text = await gw.request("GET", "/metrics")
    text = text.decode() if isinstance(text, bytes) else text
    assert _sample(text, "mcpgateway_crashes_total", service="fx") == 1
    assert _sample(text, "mcpgateway_session_restarts_total", service="fx") == 1
    assert (_sample(text, "mcpgateway_stderr_bytes_total", service="fx") or 0) >= 1000


@pytest_twisted.ensureDeferred
async def test_warm_pool_serves_first_calls_and_refills(live: Any) -> None:
    gw = live({"fx": fixture_service(prewarm=2)})
    service = gw.gateway.services["fx"]
    await wait_until(lambda: service.pool_size == 2)
    assert len(gw.children()) == 2
    pooled = {child.pid for child in service.pool.waiting}
    response, body = await gw.call("fx", "pid", "first")
    assert response.code == 200
    pid = int(body["result"].split()[0].split("=")[1])
    assert pid in pooled, "the session got a warm child"
    await wait_until(lambda: service.pool_size == 2)
    assert len(gw.children()) == 3
    _, services = await gw.request("GET", "/services")
    assert services["fx"]["children"] == 3


@pytest_twisted.ensureDeferred
async def test_warm_pool_counts_against_the_session_limit(live: Any) -> None:
    gw = live({"fx": fixture_service(prewarm=2)}, session={"max_sessions_per_service": 2})
    service = gw.gateway.services["fx"]
    await wait_until(lambda: service.pool_size == 2)
    assert (await gw.call("fx", "echo", "a", {"text": "x"}))[0].code == 200
    await wait_until(lambda: service.pool_pending == 1)
    assert service.pool_size + 1 <= 2
    assert (await gw.call("fx", "echo", "b", {"text": "x"}))[0].code == 200
    response, body = await gw.call("fx", "echo", "c", {"text": "x"})
    assert (response.code, body["code"]) == (429, "session_limit")
    assert len(gw.children()) == 2


@pytest_twisted.ensureDeferred
async def test_pool_of_a_failing_service_backs_off(live: Any) -> None:
    gw = live({"broken": fixture_service("--exit-at-start", "1", prewarm=2, backoff_initial=30)})
    service = gw.gateway.services["broken"]
    await wait_until(lambda: service.start_failures >= 1)
    spawns = service.spawns
    from .conftest import sleep

    await sleep(0.5)
    assert service.spawns == spawns, "no retry storm while backing off"
    assert service.pool_size == 0


@pytest_twisted.ensureDeferred
async def test_mcp_tool_calls_are_measured_like_rest_calls(live: Any) -> None:
    from .test_mcp_front import decoded, http, initialize, legacy_headers, modern_headers, modern_request

    gw = live({"fx": fixture_service()})
    # Tool labels come from the declared list, as for REST calls.
    _, raw = await http(gw, "POST", "/mcp", modern_request("tools/list"), modern_headers("tools/list"))
    assert "fx.echo" in [tool["name"] for tool in decoded(raw)["result"]["tools"]]
    for tool in ("echo", "fail", "rpc_error", "no_such_tool_xyz"):
        call = modern_request("tools/call", {"name": f"fx.{tool}", "arguments": {"text": "x"}})
        response, raw = await http(gw, "POST", "/mcp", call, modern_headers("tools/call", f"fx.{tool}"))
        assert response.code == 200, raw
    session = await initialize(gw)
    legacy = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "fx.echo", "arguments": {}}}
    _, raw = await http(gw, "POST", "/mcp", legacy, legacy_headers(session))
    assert decoded(raw)["result"]["isError"] is False
    await gw.call("fx", "echo", "rest", {"text": "x"})

    _, text = await gw.request("GET", "/metrics")
    text = text.decode() if isinstance(text, bytes) else text
    count = "mcpgateway_tool_call_seconds_count"
    assert _sample(text, count, service="fx", tool="echo", outcome="ok") == 3  # modern, legacy, REST
    assert _sample(text, count, service="fx", tool="fail", outcome="tool_error") == 1
    assert _sample(text, count, service="fx", tool="rpc_error", outcome="mcp_error") == 1
    assert "no_such_tool_xyz" not in text, "undeclared tool names never become labels"
    assert _sample(text, count, service="fx", tool="other") == 1
