"""
Remote MCP servers (C{url} services) end to end: the official SDK's
FastMCP served by uvicorn on loopback (C{tests/servers/remote_server.py})
in a real process, both protocol eras over Streamable HTTP, the legacy
HTTP+SSE transport, and upstreams that die, stall, redirect or answer
10 MB, through both front doors of a gateway on a real socket.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure

from mcpgateway.config import ConfigError, parse_config
from mcpgateway.devcert import main as devcert
from mcpgateway.mcp.sse import Event, EventTooLarge, SseParser

from .conftest import PYTHON, SERVERS, fixture_service, free_port, sleep, wait_until
from .test_credentials import ALICE_SECRET, BOB_SECRET, bearer, principals, secrets_file
from .test_mcp_front import connect, in_thread
from .test_metrics_pool import _sample
from .test_policy import governed  # noqa: F401 (a fixture)

REMOTE_SERVER = str(SERVERS / "remote_server.py")


# -- the upstream ------------------------------------------------------------------------------


class Upstream:
    """
    A C{remote_server.py} process on a loopback port.
    """

    def __init__(self, mode: str, *flags: str) -> None:
        self.mode = mode
        self.flags = flags
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        path = {"sse": "/sse"}.get(mode, "/mcp")
        scheme = "https" if "--tls" in flags else "http"
        self.base = f"{scheme}://127.0.0.1:{self.port}"
        self.url = self.base + path

    def launch(self) -> None:
        """
        Run the server (again) on its port.
        """
        self.process = subprocess.Popen([PYTHON, REMOTE_SERVER, str(self.port), self.mode, *self.flags])

    async def start(self) -> Upstream:
        self.launch()
        await wait_until(self._listening, timeout=20, step=0.1)
        return self

    def _listening(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    async def stats(self) -> dict[str, Any]:
        response = await treq.get(self.base + "/_stats")
        stats: dict[str, Any] = json.loads(await response.content())
        return stats

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@pytest_twisted.async_yield_fixture
async def upstream() -> AsyncIterator[Callable[..., Any]]:
    """
    Start upstreams; kill them at teardown.
    """
    started: list[Upstream] = []

    async def start(mode: str = "streamable", *flags: str) -> Upstream:
        server = Upstream(mode, *flags)
        started.append(server)
        return await server.start()

    yield start
    for server in started:
        server.kill()


def remote(server: Upstream, **settings: Any) -> dict[str, Any]:
    return {"url": server.url, "description": "a remote server", **settings}


async def no_upstream_sessions_left(server: Upstream) -> None:
    """
    Every MCP session the upstream minted was ended with DELETE.
    """

    async def check() -> bool:
        stats = await server.stats()
        return set(stats["sessions"]) == set(stats["deleted"])

    for _ in range(100):
        if await check():
            return
        await sleep(0.05)
    stats = await server.stats()
    raise AssertionError(f"upstream sessions left open: {set(stats['sessions']) - set(stats['deleted'])}")


# -- eras and transports ---------------------------------------------------------------------------


@pytest.mark.parametrize("json_response", [False, True])
@pytest_twisted.ensureDeferred
async def test_modern_streamable_http(live: Any, upstream: Any, json_response: bool) -> None:
    server = await upstream("streamable", *(["--json"] if json_response else []))
    gw = live({"r": remote(server)})
    response, tools = await gw.request("GET", "/services/r/tools")
    assert response.code == 200
    assert {"count", "big", "stall", "die", "long_task", "headers"} <= {tool["name"] for tool in tools["tools"]}
    response, body = await gw.call("r", "count", "s1")
    assert response.code == 200, body
    assert body["result"] == "1"
    assert body["is_error"] is False
    _, services = await gw.request("GET", "/services")
    assert services["r"]["protocol"] == "modern"
    assert services["r"]["transport"] == "http"
    assert "url" not in services["r"]  # like a command line, never shown
    stats = await server.stats()
    assert stats["sessions"] == []  # 2026-07-28 is stateless: no Mcp-Session-Id
    assert "GET" not in stats["methods"] and "DELETE" not in stats["methods"]


@pytest_twisted.ensureDeferred
async def test_connections_are_kept_alive_and_bounded(live: Any, upstream: Any) -> None:
    server = await upstream("streamable", "--json")
    gw = live({"r": remote(server, protocol="modern", max_connections=2)})
    for _ in range(20):
        assert (await gw.call("r", "count", "s"))[0].code == 200
    stats = await server.stats()
    assert stats["methods"]["POST"] >= 21  # discover and 20 calls
    assert len(stats["connections"]) == 1  # one after the other: one connection
    # Concurrent calls need more connections; at most max_connections stay open idle.
    calls = [Deferred.fromCoroutine(gw.call("r", "stall", f"c{i}", {"seconds": 0.3})) for i in range(5)]
    assert [response.code for response, _ in await gatherResults(calls)] == [200] * 5
    assert len((await server.stats())["connections"]) >= 5
    pool = gw.gateway.services["r"]._remote.pool
    assert sum(len(idle) for idle in pool._connections.values()) <= 2


@pytest_twisted.ensureDeferred
async def test_legacy_era_keeps_state_per_session_and_deletes_it(live: Any, upstream: Any) -> None:
    server = await upstream("streamable")
    gw = live({"r": remote(server, protocol="legacy")})
    counts = [(await gw.call("r", "count", session))[1]["result"] for session in ("a", "a", "b", "a", "b")]
    assert counts == ["1", "2", "1", "3", "2"]
    _, services = await gw.request("GET", "/services")
    assert services["r"]["protocol"] == "legacy"
    stats = await server.stats()
    assert len(stats["sessions"]) == 2
    assert stats["deleted"] == []
    response, _ = await gw.request("DELETE", "/sessions/a")
    assert response.code == 200
    await wait_until(lambda: len(gw.gateway.services["r"].children) == 1)
    stats = await server.stats()
    assert len(stats["deleted"]) == 1
    assert stats["deleted"][0] in stats["sessions"]
    # b is untouched; a starts afresh upstream
    assert (await gw.call("r", "count", "b"))[1]["result"] == "3"
    fresh = (await gw.call("r", "count", "a"))[1]
    assert fresh["result"] == "1"
    assert fresh["session_restarted"] is False
    for session in ("a", "b"):
        await gw.request("DELETE", f"/sessions/{session}")
    await no_upstream_sessions_left(server)


@pytest_twisted.ensureDeferred
async def test_auto_probe_falls_back_to_initialize(live: Any, upstream: Any) -> None:
    """
    A 2025 server answers C{server/discover} with an error: the gateway
    falls back to C{initialize} and its C{Mcp-Session-Id}.
    """
    server = await upstream("legacy-only")
    gw = live({"r": remote(server)})
    counts = [(await gw.call("r", "count", "s"))[1]["result"] for _ in range(2)]
    assert counts == ["1", "2"]
    _, services = await gw.request("GET", "/services")
    assert services["r"]["protocol"] == "legacy"
    await gw.request("DELETE", "/sessions/s")
    await no_upstream_sessions_left(server)


@pytest.mark.parametrize("transport", ["auto", "sse"])
@pytest_twisted.ensureDeferred
async def test_legacy_sse_transport(live: Any, upstream: Any, transport: str) -> None:
    server = await upstream("sse")
    gw = live({"r": remote(server, transport=transport)})
    response, tools = await gw.request("GET", "/services/r/tools")
    assert response.code == 200, tools
    assert "count" in {tool["name"] for tool in tools["tools"]}
    counts = [(await gw.call("r", "count", session))[1]["result"] for session in ("a", "a", "b")]
    assert counts == ["1", "2", "1"]
    _, progress = await gw.call("r", "long_task", "a", {"steps": 2, "delay": 0.05})
    assert progress["result"] == "done 2"
    stats = await server.stats()
    # The event stream of each session (and the tool lister's) is a GET.
    assert stats["methods"]["GET"] >= 2
    response, _ = await gw.request("DELETE", "/sessions/a")
    await wait_until(lambda: len(gw.gateway.services["r"].children) == 1)


# -- failures ----------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_ten_megabyte_answer_and_the_cap(live: Any, upstream: Any) -> None:
    server = await upstream("streamable")
    gw = live({"r": remote(server), "small": remote(server, max_response_bytes=5_000_000)})
    response, body = await gw.call("r", "big", "s", {"mb": 10})
    assert response.code == 200
    assert len(body["result"]) == 10_000_000
    response, body = await gw.call("small", "big", "s", {"mb": 10})
    assert response.code == 502
    assert body["code"] == "child_failed"
    assert "max_response_bytes" in body["error"]
    # The cap ends one answer, not the service.
    response, body = await gw.call("small", "count", "s")
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_bad_answers_are_502(live: Any, upstream: Any) -> None:
    server = await upstream("streamable")
    gw = live({"r": remote(server, protocol="legacy")})
    response, body = await gw.call("r", "count", "s")
    assert body.get("result") == "1", body
    response, body = await gw.call("r", "html_answer", "s")
    assert response.code == 502, body
    assert body["code"] == "child_failed"
    assert "HTTP 200 (text/html)" in body["error"]
    response, body = await gw.call("r", "server_error", "s")
    assert response.code == 502, body
    assert body["http_status"] == 500
    assert "upstream exploded" in body["error"]
    # A bad answer ends one call, not the session: its state is intact.
    assert (await gw.call("r", "count", "s"))[1]["result"] == "2"
    response, body = await gw.call("r", "no_such_tool", "s")
    assert response.code == 200 and body["is_error"] is True  # the SDK's own answer
    await gw.request("DELETE", "/sessions/s")
    await no_upstream_sessions_left(server)


@pytest_twisted.ensureDeferred
async def test_a_stalled_upstream_times_out(live: Any, upstream: Any) -> None:
    server = await upstream("streamable")
    gw = live({"r": remote(server, call_timeout=1)})
    response, body = await gw.call("r", "stall", "s", {"seconds": 30})
    assert response.code == 504, body
    assert body["code"] == "call_timeout"
    response, body = await gw.call("r", "count", "s")
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_an_upstream_that_dies_mid_call(live: Any, upstream: Any) -> None:
    server = await upstream("streamable")
    gw = live({"r": remote(server, protocol="legacy", backoff_initial=0.3, backoff_max=0.3)})
    assert (await gw.call("r", "count", "s"))[1]["result"] == "1"
    response, body = await gw.call("r", "die", "s")
    assert response.code == 502, body
    assert body["code"] == "child_failed"
    await wait_until(lambda: not server.alive)
    # Unreachable now: 503 with a Retry-After, like a child that cannot start.
    response, body = await gw.call("r", "count", "s")
    assert response.code == 503, body
    assert body["code"] == "service_unavailable"
    assert "unreachable" in body["error"]
    assert response.headers.getRawHeaders(b"retry-after")
    _, services = await gw.request("GET", "/services")
    assert services["r"]["state"] == "failing"
    # Back on the same port: after the backoff, a new upstream session.
    await server.start()
    await sleep(0.4)
    response, body = await gw.call("r", "count", "s")
    assert response.code == 200, body
    assert body["result"] == "1"  # a new upstream session


@pytest.mark.parametrize("protocol", ["legacy", "modern"])
@pytest_twisted.ensureDeferred
async def test_an_upstream_gone_between_calls(live: Any, upstream: Any, protocol: str) -> None:
    """
    A call that cannot be sent (connection refused) is a 503, safe to retry,
    not a 502: nothing reached the server.
    """
    server = await upstream("streamable")
    gw = live({"r": remote(server, protocol=protocol)})
    assert (await gw.call("r", "count", "s"))[0].code == 200
    server.kill()
    response, body = await gw.call("r", "count", "s")
    assert response.code == 503, body
    assert body["code"] == "service_unavailable"
    assert "the call was not sent" in body["error"]
    assert response.headers.getRawHeaders(b"retry-after") == [b"1"]


@pytest_twisted.ensureDeferred
async def test_an_unreachable_url(live: Any) -> None:
    gw = live({"r": {"url": f"http://127.0.0.1:{free_port()}/mcp"}})
    response, body = await gw.call("r", "count", "s")
    assert response.code == 503
    assert body["code"] == "service_unavailable"
    assert int(response.headers.getRawHeaders(b"retry-after")[0]) >= 1
    response, body = await gw.request("GET", "/services/r/tools")
    assert response.code == 503


@pytest_twisted.ensureDeferred
async def test_redirects_are_refused(live: Any, upstream: Any) -> None:
    server = await upstream("redirect")
    gw = live({"r": remote(server)})
    response, body = await gw.call("r", "count", "s")
    assert response.code == 503
    assert "redirect" in body["error"]


# -- sessions, policy --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_expired_session_deletes_its_upstream_session(live: Any, upstream: Any) -> None:
    server = await upstream("streamable")
    gw = live({"r": remote(server, protocol="legacy")}, session={"cleanup_interval": 0.2})
    response, _ = await gw.call("r", "count", "short", timeout=0.3)
    assert response.code == 200
    assert len((await server.stats())["sessions"]) == 1
    await wait_until(lambda: len(gw.gateway.sessions) == 0, timeout=5)
    await no_upstream_sessions_left(server)


@pytest_twisted.ensureDeferred
async def test_the_tool_policy_applies_to_a_remote_service(governed: Any, upstream: Any) -> None:  # noqa: F811
    server = await upstream("streamable")
    policy = {"default": "allow", "rules": [{"roles": ["admin"], "deny": ["r/die"]}]}
    gw, _ = governed({"r": remote(server)}, policy=policy)
    _, tools = await gw.request("GET", "/services/r/tools")
    names = {tool["name"] for tool in tools["tools"]}
    assert "count" in names and "die" not in names
    response, body = await gw.call("r", "die", "s")
    assert response.code == 403
    assert body["code"] == "forbidden_tool"
    assert server.alive  # the call never reached it


# -- TLS -------------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_https_verified_against_ca_file(live: Any, upstream: Any, tmp_path: Path) -> None:
    pem = tmp_path / "upstream.pem"
    devcert([str(pem), "--host", "127.0.0.1"])
    server = await upstream("streamable", "--tls", str(pem))
    assert server.url.startswith("https://")
    gw = live({"trusted": remote(server, ca_file=str(pem)), "system": remote(server)})
    response, body = await gw.call("trusted", "count", "s")
    assert response.code == 200, body
    assert body["result"] == "1"
    # The system's trust store does not know this self-signed certificate.
    response, body = await gw.call("system", "count", "s")
    assert response.code == 503
    assert "unreachable" in body["error"]
    assert "certificate verify failed" in body["error"]


# -- headers -------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_configured_headers(live: Any, upstream: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("REMOTE_TEAM", "blue")
    server = await upstream("streamable")
    gw = live({"r": remote(server, protocol="legacy", headers={"X-Team": "${REMOTE_TEAM}", "X-Fixed": "1"})})
    _, body = await gw.call("r", "headers", "s")
    seen = json.loads(body["result"])
    assert seen["x-team"] == "blue"
    assert seen["x-fixed"] == "1"
    assert seen["mcp-protocol-version"] == "2025-11-25"
    assert seen["mcp-session-id"]
    await gw.request("DELETE", "/sessions/s")
    await no_upstream_sessions_left(server)


@pytest_twisted.ensureDeferred
async def test_a_configured_credential_echoed_by_the_upstream_is_redacted(
    live: Any, upstream: Any, monkeypatch: Any
) -> None:
    """
    A configured C{Authorization: Bearer ${VAR}} is a credential too: an
    upstream that quotes it in its error text does not hand it to callers.
    """
    token = "shared-docs-token-7d1e93b0"
    monkeypatch.setenv("REMOTE_TOKEN", token)
    server = await upstream("streamable")
    gw = live({"r": remote(server, protocol="legacy", headers={"Authorization": "Bearer ${REMOTE_TOKEN}"})})
    assert json.loads((await gw.call("r", "headers", "s"))[1]["result"])["authorization"] == f"Bearer {token}"
    response, body = await gw.call("r", "auth_echo", "s")
    assert response.code == 502, body
    assert "refused Authorization" in body["error"]
    assert token not in json.dumps(body)
    assert "[secret:services.r.headers.Authorization]" in body["error"]
    await gw.request("DELETE", "/sessions/s")
    await no_upstream_sessions_left(server)


@pytest_twisted.ensureDeferred
async def test_each_principal_reaches_the_upstream_with_its_own_token(
    live: Any, upstream: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """
    C{credentials} headers (the secrets block) per principal: alice's and
    bob's sessions each carry their own C{Authorization}, carol has none.
    """
    monkeypatch.setenv("TEST_BOB_REMOTE", BOB_SECRET)
    path = secrets_file(tmp_path, {"alice-remote": ALICE_SECRET})
    server = await upstream("streamable")
    service = remote(
        server,
        protocol="legacy",
        headers={"X-Team": "blue"},
        credentials={
            "principals": {
                "alice": {"headers": {"Authorization": "Bearer {alice-remote}"}},
                "bob": {"headers": {"Authorization": "Bearer {bob-remote}"}},
            }
        },
    )
    gw = live(
        {"r": service},
        server=principals(),
        secrets={"file": str(path), "env": {"bob-remote": "TEST_BOB_REMOTE"}},
    )

    async def seen_by_upstream(who: str) -> Any:
        body = {"tool": "headers", "session_id": f"s-{who}", "arguments": {}}
        response, answer = await gw.request("POST", "/services/r/call", body, **bearer(who))
        return response.code, json.loads(answer["result"]) if response.code == 200 else answer

    status, alice = await seen_by_upstream("alice")
    assert (status, alice["authorization"], alice["x-team"]) == (200, f"Bearer {ALICE_SECRET}", "blue")
    status, bob = await seen_by_upstream("bob")
    assert (status, bob["authorization"]) == (200, f"Bearer {BOB_SECRET}")
    assert bob["mcp-session-id"] != alice["mcp-session-id"]
    status, carol = await seen_by_upstream("carol")
    assert (status, carol["code"]) == (403, "no_credential")
    assert len((await server.stats())["sessions"]) == 2  # nothing opened for carol
    for who in ("alice", "bob"):
        await gw.request("DELETE", f"/sessions/s-{who}", **bearer(who))
    await no_upstream_sessions_left(server)


@pytest.mark.parametrize("protocol", ["legacy", "modern"])
@pytest_twisted.ensureDeferred
async def test_an_upstream_checking_each_callers_bearer(
    live: Any, upstream: Any, tmp_path: Path, protocol: str
) -> None:
    """
    An upstream behind its own auth, in both eras: alice's token is good,
    bob's is refused (401).  Bob's refused credential is his call's failure
    (502), not the service's: alice is served before, after, and in between,
    with no backoff.
    """
    path = secrets_file(tmp_path, {"alice-remote": ALICE_SECRET, "bob-remote": BOB_SECRET})
    server = await upstream("streamable", "--bearer", ALICE_SECRET)
    service = remote(
        server,
        protocol=protocol,
        backoff_initial=30,
        backoff_max=30,
        credentials={
            "principals": {
                "alice": {"headers": {"Authorization": "Bearer {alice-remote}"}},
                "bob": {"headers": {"Authorization": "Bearer {bob-remote}"}},
            }
        },
    )
    gw = live({"r": service}, server=principals(), secrets={"file": str(path)})

    async def call(who: str, session: str) -> tuple[int, Any]:
        body = {"tool": "headers", "session_id": session, "arguments": {}}
        response, answer = await gw.request("POST", "/services/r/call", body, **bearer(who))
        return response.code, answer

    status, answer = await call("alice", "a1")
    assert status == 200 and json.loads(answer["result"])["authorization"] == f"Bearer {ALICE_SECRET}", answer
    for attempt in ("b1", "b2"):
        status, answer = await call("bob", attempt)
        assert (status, answer["code"]) == (502, "child_failed"), answer
        assert "401" in answer["error"] and BOB_SECRET not in json.dumps(answer)
    # The tool listing session is nobody's (no default mapping here): refused too, and no backoff either.
    response, listing = await gw.request("GET", "/services/r/tools", **bearer("alice"))
    assert (response.code, listing["code"], listing["http_status"]) == (502, "child_failed", 401), listing
    status, answer = await call("alice", "a2")
    assert status == 200, answer
    for who, session in (("alice", "a1"), ("alice", "a2")):
        await gw.request("DELETE", f"/sessions/{session}", **bearer(who))
    await no_upstream_sessions_left(server)


# -- the MCP front door -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
@pytest_twisted.ensureDeferred
async def test_mcp_front_sees_remote_and_stdio_alike(live: Any, upstream: Any, mode: str) -> None:
    server = await upstream("streamable")
    gw = live({"r": remote(server, protocol="legacy"), "a": fixture_service()})

    async def use() -> tuple[list[str], str, list[Any], str]:
        updates: list[Any] = []

        async def progress(value: float, total: float | None, message: str | None) -> None:
            updates.append((value, total, message))

        async with connect(gw.url + "/mcp", mode) as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            counted = await client.call_tool("r.count", {})
            done = await client.call_tool("r.long_task", {"steps": 3, "delay": 0.05}, progress_callback=progress)
            return names, counted.content[0].text, updates, done.content[0].text  # type: ignore[union-attr]

    names, counted, updates, done = await in_thread(use())
    assert {"r.count", "r.big", "a.echo"} <= set(names)
    assert counted == "1"
    assert done == "done 3"
    assert updates == [(1, 3, "step 1 of 3"), (2, 3, "step 2 of 3"), (3, 3, "step 3 of 3")]
    if mode != "legacy":
        await gw.request("DELETE", "/sessions/mcp-modern.tester")
    await no_upstream_sessions_left(server)


@pytest_twisted.ensureDeferred
async def test_metrics_label_the_transport(live: Any, upstream: Any) -> None:
    server = await upstream("streamable")
    gw = live({"r": remote(server), "a": fixture_service()})
    await gw.request("GET", "/services/r/tools")
    await gw.call("r", "count", "s")
    _, text = await gw.request("GET", "/metrics")
    text = text.decode()
    assert _sample(text, "mcpgateway_service_info", service="r", transport="http") == 1
    assert _sample(text, "mcpgateway_service_info", service="a", transport="stdio") == 1
    assert _sample(text, "mcpgateway_children", service="r") == 1  # the session's upstream session
    assert _sample(text, "mcpgateway_tool_call_seconds_count", service="r", tool="count", outcome="ok") == 1


@pytest_twisted.ensureDeferred
async def test_stop_ends_upstream_sessions(live: Any, upstream: Any) -> None:
    server = await upstream("streamable")
    gw = live({"r": remote(server, protocol="legacy")})
    for session in ("a", "b", "c"):
        assert (await gw.call("r", "count", session))[0].code == 200
    assert len((await server.stats())["sessions"]) >= 3
    await gw.gateway.stop()
    await no_upstream_sessions_left(server)


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"url": "http://x/mcp", "command": ["x"]}, "services.r: give command (a child process) or url"),
        ({"url": "ftp://x/mcp"}, "services.r.url: expected an http:// or https:// URL"),
        ({"url": "https://u:p@x/mcp"}, "services.r.url: put credentials in headers"),
        ({"url": "http://x/mcp", "sandbox": {}}, "services.r.sandbox: not for a url service"),
        ({"url": "http://x/mcp", "env": {}}, "services.r.env: not for a url service"),
        ({"url": "http://x/mcp", "transport": "websocket"}, "services.r.transport: expected auto, streamable-http"),
        ({"url": "http://x/mcp", "headers": {"Mcp-Session-Id": "1"}}, "services.r.headers.Mcp-Session-Id: the"),
        ({"url": "http://x/mcp", "headers": {"X": "a\nb"}}, "services.r.headers.X: a header value"),
        ({"url": "http://x/mcp", "ca_file": "/nonexistent.pem"}, "services.r.ca_file: no such file"),
        ({"url": "http://x/mcp", "max_response_bytes": 0}, "services.r.max_response_bytes"),
        ({"command": ["x"], "headers": {}}, "services.r.headers: only for a url service"),
        (
            {"url": "http://x/mcp", "credentials": {"default": {"env": {"TOKEN": "secret-1"}}}},
            "services.r.credentials.default.env: a url service runs no process",
        ),
        ({"description": "nothing"}, "services.r.command: missing"),
    ],
)
def test_config_errors(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"services": {"r": entry}})
    assert str(error.value).startswith(message), str(error.value)


def test_config_reads_a_url_service() -> None:
    os.environ["REMOTE_TEST_TOKEN"] = "t0ken"
    try:
        config = parse_config(
            {"services": {"r": {"url": "https://x/mcp", "headers": {"Authorization": "Bearer ${REMOTE_TEST_TOKEN}"}}}}
        )
    finally:
        del os.environ["REMOTE_TEST_TOKEN"]
    service = config.services["r"]
    assert service.url == "https://x/mcp"
    assert service.command == ()
    assert service.transport == "auto"
    assert service.headers == {"Authorization": "Bearer t0ken"}
    assert service.max_response_bytes == 128 * 1024 * 1024


# -- the headers a request carries -------------------------------------------------------------------


def test_a_modern_post_repeats_its_method_and_name_as_the_sdk_reads_them() -> None:
    """
    A 2026-07-28 request carries its version, method and name in headers;
    a name that is not plain printable ASCII is sent in the base64
    sentinel, and the official SDK's decoder gets the exact name back.
    """
    from mcp.shared.inbound import decode_header_value

    from mcpgateway.mcp.httpheaders import post_headers
    from mcpgateway.mcp.spec import MODERN_VERSION, VERSION_KEY

    for name in ["add", "café", " padded ", "=?base64?YWRk?=", "line\nbreak"]:
        message = {"method": "tools/call", "params": {"name": name, "_meta": {VERSION_KEY: MODERN_VERSION}}}
        headers = post_headers({"Authorization": ["Bearer t"]}, message, "ignored", "2025-11-25")
        assert headers["MCP-Protocol-Version"] == [MODERN_VERSION]
        assert headers["Mcp-Method"] == ["tools/call"]
        sent = headers["Mcp-Name"][0]
        assert sent.isascii() and sent.isprintable() and sent == sent.strip()  # survives an HTTP field
        assert decode_header_value(sent) == name
        assert "Mcp-Session-Id" not in headers and headers["Authorization"] == ["Bearer t"]


def test_a_legacy_post_and_the_delete_carry_the_session() -> None:
    """
    A legacy-era POST carries the session's id and negotiated version (none
    before C{initialize} minted them); so does the DELETE that ends it.
    """
    from mcpgateway.mcp.httpheaders import delete_headers, post_headers

    message = {"method": "tools/call", "params": {"name": "add"}}
    headers = post_headers({"X-Key": ["k"]}, message, "s-1", "2025-11-25")
    assert headers == {
        "X-Key": ["k"],
        "Accept": ["application/json, text/event-stream"],
        "Content-Type": ["application/json"],
        "Mcp-Session-Id": ["s-1"],
        "MCP-Protocol-Version": ["2025-11-25"],
    }
    assert "Mcp-Session-Id" not in post_headers({}, {"method": "initialize"}, None, None)
    assert delete_headers({"X-Key": ["k"]}, "s-1", None) == {"X-Key": ["k"], "Mcp-Session-Id": ["s-1"]}


# -- the event-stream reader -----------------------------------------------------------------------


def test_sse_parser_reads_events_in_pieces() -> None:
    parser = SseParser(1000)
    stream = b'event: endpoint\r\ndata: /messages/?id=1\r\n\r\n: a comment\n\ndata: {"a":\ndata: 1}\rid: 7\r\r\n'
    events = [event for i in range(len(stream)) for event in parser.feed(stream[i : i + 1])]
    assert events == [Event("endpoint", "/messages/?id=1", ""), Event("message", '{"a":\n1}', "7")]


def test_sse_parser_bounds_an_event() -> None:
    parser = SseParser(10)
    with pytest.raises(EventTooLarge):
        parser.feed(b"data: 12345\ndata: 67890\n")
    with pytest.raises(EventTooLarge):
        SseParser(10).feed(b"data: " + b"x" * 20)


def test_sse_parser_is_linear_in_a_long_line_arriving_in_pieces() -> None:
    """
    A 10 MB answer on one C{data:} line comes in thousands of reads; the
    parser must not copy or rescan what it already holds at each of them
    (it did: a 40 MB event blocked the reactor for 10 s).  The alarm is a
    guard against a hang, not a measurement: linear parsing takes well
    under a second, quadratic parsing of this takes minutes.
    """
    line = b"data: " + b"x" * (16 << 20) + b"\n\n"

    def hung(signum: int, frame: Any) -> None:
        raise AssertionError("feeding one 16 MB event in 256-byte pieces took over 15 s: quadratic parsing")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(15)
    try:
        parser = SseParser(32 << 20)
        events = [event for i in range(0, len(line), 256) for event in parser.feed(line[i : i + 256])]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert [(event.type, len(event.data)) for event in events] == [("message", 16 << 20)]


def test_sse_parser_many_lines_in_one_chunk() -> None:
    stream = b"".join(b"data: %d\n\n" % i for i in range(20000)) + b"data: tail\r"
    parser = SseParser(100)
    events = parser.feed(stream)
    assert [event.data for event in events] == [str(i) for i in range(20000)]
    assert parser.feed(b"\n\r\n") == [Event("message", "tail", "")]


def test_close_deletes_a_session_whose_server_named_no_protocol_version() -> None:
    """
    A server that mints an C{Mcp-Session-Id} but leaves C{protocolVersion}
    out of its C{initialize} result (the handshake takes it as 2024-11-05)
    still gets its DELETE at close, and the session ends (the DELETE was
    only built when a version was known: closing raised UnboundLocalError,
    sent nothing and never ended the peer).
    """
    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock

    from mcpgateway.mcp.remote import HttpPeer

    sent: list[tuple[str, str, Any]] = []

    class Answered:
        def __init__(self) -> None:
            self.original = self

        length = 0

        def deliverBody(self, protocol: Any) -> None:
            from twisted.web.client import ResponseDone

            protocol.makeConnection(None)
            protocol.connectionLost(Failure(ResponseDone()))

        async def content(self) -> bytes:
            return b""

    class Client:
        def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
            sent.append((method, url, kwargs["headers"]))
            return succeed(Answered())

    peer = HttpPeer("svc", "http://127.0.0.1:1/mcp", "streamable-http", Client(), Clock(), {}, 1000)  # type: ignore[arg-type]
    peer.session_id = "abc"
    closed = peer.close(1.0)
    assert closed.called and not peer.alive
    assert [(method, headers.getRawHeaders(b"mcp-session-id")) for method, _, headers in sent] == [("DELETE", [b"abc"])]
    assert closed.result.reason == "closed by the gateway"


def test_close_is_bounded_by_the_grace_when_the_delete_answer_stalls() -> None:
    """
    A server that answers the DELETE's headers and then never finishes its
    body does not hold the close past C{close_grace} (the grace bounded
    only the headers: the body was awaited forever, so a gateway's stop hung).
    """
    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock

    from mcpgateway.mcp.remote import HttpPeer

    stopped: list[bool] = []

    class Transport:
        def stopProducing(self) -> None:
            stopped.append(True)

    class Stalled:
        length = 10
        original: Any = None

        def deliverBody(self, protocol: Any) -> None:
            protocol.makeConnection(Transport())
            protocol.dataReceived(b"partial")

        def content(self) -> Deferred[bytes]:
            return Deferred()

    class Client:
        def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
            answer = Stalled()
            answer.original = answer
            return succeed(answer)

    clock = Clock()
    peer = HttpPeer("svc", "http://127.0.0.1:1/mcp", "streamable-http", Client(), clock, {}, 1000)  # type: ignore[arg-type]
    peer.session_id = "abc"
    closed = peer.close(2.0)
    assert not closed.called
    clock.advance(2.0)
    assert closed.called and not peer.alive
    assert stopped == [True]  # the connection was dropped


def test_an_answer_stream_left_open_is_dropped_when_the_session_ends() -> None:
    """
    A server that answers a request with an event stream and keeps it open
    after the response (the specification says it SHOULD close it) does
    not keep the connection once the session is over.
    """
    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock
    from twisted.web.http_headers import Headers
    from twisted.web.iweb import UNKNOWN_LENGTH

    from mcpgateway.mcp.remote import HttpPeer

    dropped: list[bool] = []

    class Transport:
        def stopProducing(self) -> None:
            dropped.append(True)

    class Streaming:
        code = 200
        length = UNKNOWN_LENGTH
        headers = Headers({b"content-type": [b"text/event-stream"]})

        def __init__(self) -> None:
            self.original = self

        def deliverBody(self, protocol: Any) -> None:
            protocol.makeConnection(Transport())
            protocol.dataReceived(b'event: message\ndata: {"jsonrpc": "2.0", "id": 1, "result": {"ok": true}}\n\n')

    class Client:
        def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
            return succeed(Streaming())

    peer = HttpPeer("svc", "http://127.0.0.1:1/mcp", "streamable-http", Client(), Clock(), {}, 1000)  # type: ignore[arg-type]
    answer = peer.request("tools/list", {})
    assert answer.called and answer.result == {"ok": True}
    assert dropped == []  # later events would still reach the hooks
    peer.abort("the gateway stops")
    assert dropped == [True]


def test_an_sse_stream_answered_after_the_session_ended_is_not_kept() -> None:
    """
    HTTP+SSE: the GET that opens the event stream is cancelled when the
    session ends before it is answered (a handshake timed out), so a late
    answer does not hold an event stream (and an upstream session) open.
    """
    from twisted.internet.task import Clock

    from mcpgateway.mcp.remote import HttpPeer

    asked: list[Deferred[Any]] = []

    class Client:
        def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
            assert method == "GET"
            asked.append(Deferred())
            return asked[-1]

    peer = HttpPeer("svc", "http://127.0.0.1:1/sse", "sse", Client(), Clock(), {}, 1000)  # type: ignore[arg-type]
    handshake = peer.request("initialize", {})
    handshake.addErrback(lambda _: None)
    assert len(asked) == 1 and not asked[0].called
    handshake.cancel()  # the handshake timed out
    closed = peer.close(1.0)
    assert closed.called and not peer.alive
    assert asked[0].called  # cancelled, not left waiting for the server
    asked[0].addErrback(lambda _: None)


def test_notifications_to_a_stalled_server_do_not_hang_for_ever() -> None:
    """
    A server that accepts a POST and never answers: a notification (e.g.
    the C{notifications/cancelled} of each timed-out call) is given up
    after C{send_timeout}, and any still waiting is dropped when the
    session ends; neither holds a connection for ever.
    """
    from twisted.internet.task import Clock

    from mcpgateway.mcp.remote import HttpPeer

    posts: list[Deferred[Any]] = []

    class Client:
        def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
            posts.append(Deferred())
            return posts[-1]

    clock = Clock()
    peer = HttpPeer(
        "svc",
        "http://127.0.0.1:1/mcp",
        "streamable-http",
        Client(),
        clock,
        {},
        1000,
        send_timeout=5.0,  # type: ignore[arg-type]
    )
    peer.notify("notifications/cancelled", {"requestId": 1})
    assert len(posts) == 1 and not posts[0].called
    clock.advance(5.0)
    assert posts[0].called  # given up: the request was cancelled
    peer.notify("notifications/cancelled", {"requestId": 2})
    assert not posts[1].called
    peer.abort("the gateway stops")
    assert posts[1].called
    for post in posts:
        post.addErrback(lambda _: None)
