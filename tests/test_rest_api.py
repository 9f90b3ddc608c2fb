"""
The REST API end to end: a gateway on a real socket, real child processes,
every route and every error status.  The C{live} fixture fails a test that
leaves a child (or grandchild) behind.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from .conftest import AUTH, PASSWORD, USER, fixture_service, sleep, wait_until

# -- health, services, tools ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_health_needs_no_credentials(live: Any) -> None:
    gw = live({"echo": fixture_service()})
    response, body = await gw.request("GET", "/health", auth=None)
    assert (response.code, body["status"]) == (200, "healthy")
    assert body["status"] == "healthy"
    assert body["timestamp"].endswith("Z")
    assert body["version"]
    assert response.headers.getRawHeaders(b"server") == [b"mcpgateway"]
    assert response.headers.getRawHeaders(b"x-content-type-options") == [b"nosniff"]


@pytest_twisted.ensureDeferred
async def test_services_lists_enabled_services_without_command_lines(live: Any) -> None:
    gw = live(
        {
            "echo": fixture_service(description="echoes"),
            "off": fixture_service(enabled=False),
        }
    )
    response, body = await gw.request("GET", "/services")
    assert response.code == 200
    assert set(body) == {"echo"}
    assert body["echo"]["description"] == "echoes"
    assert body["echo"]["enabled"] is True
    assert body["echo"]["state"] == "idle"
    assert "fixture_server" not in json.dumps(body)
    response, body = await gw.request("POST", "/services/off/call", {"tool": "echo", "session_id": "s"})
    assert response.code == 404
    assert body["code"] == "service_not_found"


@pytest_twisted.ensureDeferred
async def test_tools_all_pages_then_cached(live: Any) -> None:
    gw = live({"paged": fixture_service("--tools-pages", "3")})
    service = gw.gateway.services["paged"]
    response, body = await gw.request("GET", "/services/paged/tools")
    assert response.code == 200
    assert body["service"] == "paged"
    names = [tool["name"] for tool in body["tools"]]
    assert "echo" in names
    assert {name for name in names if name.startswith("page")} >= {"page1_tool1", "page2_tool1", "page3_tool1"}
    assert len(names) == len(set(names))
    spawned = service.spawns
    # The lister child is closed once the list is cached; the cache serves later requests.
    await wait_until(lambda: not gw.children())
    response, again = await gw.request("GET", "/services/paged/tools")
    assert again == body
    assert service.spawns == spawned
    assert not gw.children()


@pytest_twisted.ensureDeferred
async def test_concurrent_first_tools_requests_share_one_fill(live: Any) -> None:
    gw = live({"slow": fixture_service("--tools-sleep", "0.3")})
    results = await gatherResults([ensureDeferred(gw.request("GET", "/services/slow/tools")) for _ in range(6)])
    assert all(response.code == 200 for response, _ in results)
    assert len({json.dumps(body, sort_keys=True) for _, body in results}) == 1
    assert gw.gateway.services["slow"].spawns == 1


@pytest_twisted.ensureDeferred
async def test_tools_list_changed_before_first_answer(live: Any) -> None:
    gw = live({"node_like": fixture_service("--list-changed-first")})
    response, body = await gw.request("GET", "/services/node_like/tools")
    assert response.code == 200
    assert "echo" in [tool["name"] for tool in body["tools"]]


@pytest_twisted.ensureDeferred
async def test_list_changed_from_a_session_child_refreshes_the_cache(live: Any) -> None:
    gw = live({"fx": fixture_service()})
    _, before = await gw.request("GET", "/services/fx/tools")
    assert "late_tool" not in [tool["name"] for tool in before["tools"]]
    await gw.call("fx", "notify", "s")
    spawns = gw.gateway.services["fx"].spawns

    async def names() -> list[str]:
        _, body = await gw.request("GET", "/services/fx/tools")
        return [tool["name"] for tool in body["tools"]]

    for _ in range(100):
        if "late_tool" in await names():
            break
        await sleep(0.02)
    assert "late_tool" in await names()
    assert gw.gateway.services["fx"].spawns == spawns, "refreshed from the session's own child"


# -- calls ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_call_result_is_a_string_with_content_verbatim(live: Any) -> None:
    gw = live({"fx": fixture_service()})
    response, body = await gw.call("fx", "echo", "call-1", {"text": "héllo"})
    assert response.code == 200, body
    assert body["result"] == "héllo"
    assert body["is_error"] is False
    assert body["content"] == [{"type": "text", "text": "héllo"}]
    assert body["session_id"] == "call-1"
    assert body["service"] == "fx"
    assert body["tool"] == "echo"
    assert body["session_restarted"] is False

    response, body = await gw.call("fx", "image", "call-1")
    assert response.code == 200
    assert "[image image/png 10 bytes]" in body["result"]
    assert body["content"][0]["type"] == "image"


@pytest_twisted.ensureDeferred
async def test_tool_error_is_reported_as_is_error(live: Any) -> None:
    gw = live({"fx": fixture_service()})
    response, body = await gw.call("fx", "fail", "s1")
    assert response.code == 200
    assert body["is_error"] is True
    assert body["result"]


@pytest_twisted.ensureDeferred
async def test_jsonrpc_error_is_422_with_code_and_data(live: Any) -> None:
    gw = live({"fx": fixture_service()})
    response, body = await gw.call("fx", "rpc_error", "s1")
    assert response.code == 422
    assert body["code"] == "mcp_error"
    assert body["mcp_code"] == -32042
    assert body["mcp_data"] == {"why": "testing"}
    assert "custom failure" in body["error"]


@pytest_twisted.ensureDeferred
async def test_session_keeps_state_and_sessions_are_separate(live: Any) -> None:
    gw = live({"fx": fixture_service()})
    counts = [(await gw.call("fx", "counter", "a"))[1]["result"] for _ in range(3)]
    assert counts == ["1", "2", "3"]
    assert (await gw.call("fx", "counter", "b"))[1]["result"] == "1"
    assert len(gw.children()) == 2


@pytest_twisted.ensureDeferred
async def test_one_session_uses_two_services(live: Any) -> None:
    gw = live({"one": fixture_service(), "two": fixture_service("--modern")})
    assert (await gw.call("one", "counter", "call"))[0].code == 200
    assert (await gw.call("two", "counter", "call"))[0].code == 200
    assert (await gw.call("one", "counter", "call"))[1]["result"] == "2"
    response, sessions = await gw.request("GET", "/sessions")
    assert response.code == 200
    assert sessions["call"]["services"] == ["one", "two"]
    assert sessions["call"]["timeout"] == 300
    assert 0 < sessions["call"]["time_remaining"] <= 300
    assert gw.gateway.services["one"].era.name == "legacy"
    assert gw.gateway.services["two"].era.name == "modern"


@pytest_twisted.ensureDeferred
async def test_concurrent_first_calls_share_one_child(live: Any) -> None:
    gw = live({"fx": fixture_service()})
    results = await gatherResults([ensureDeferred(gw.call("fx", "pid", "same")) for _ in range(8)])
    assert {response.code for response, _ in results} == {200}
    assert len({body["result"] for _, body in results}) == 1
    assert gw.gateway.services["fx"].spawns == 1
    pid_line = results[0][1]["result"]
    pid, pgrp = (int(part.split("=")[1]) for part in pid_line.split())
    assert pid == pgrp, "the child leads its own process group"


@pytest_twisted.ensureDeferred
async def test_server_requests_are_answered_and_not_mistaken_for_responses(live: Any) -> None:
    gw = live({"fx": fixture_service()})
    response, body = await gw.call("fx", "ask", "s")
    assert response.code == 200, body
    assert "-32601" in body["result"]
    assert "ping ok" in body["result"]


@pytest_twisted.ensureDeferred
async def test_garbage_stdout_lines_are_skipped(live: Any) -> None:
    gw = live({"fx": fixture_service("--garbage")})
    for text in ("a", "b"):
        response, body = await gw.call("fx", "echo", "s", {"text": text})
        assert response.code == 200
        assert body["result"] == text


@pytest_twisted.ensureDeferred
async def test_stderr_flood_does_not_wedge_the_child(live: Any) -> None:
    gw = live({"fx": fixture_service("--stderr-flood", "1000000")})
    for i in range(5):
        response, body = await gw.call("fx", "counter", "s")
        assert response.code == 200
        assert body["result"] == str(i + 1)


# -- sessions ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_delete_session(live: Any) -> None:
    gw = live({"fx": fixture_service()})
    await gw.call("fx", "counter", "gone")
    assert len(gw.children()) == 1
    response, body = await gw.request("DELETE", "/sessions/gone")
    assert response.code == 200
    assert body == {"message": "session closed", "session_id": "gone"}
    await wait_until(lambda: not gw.children())
    response, body = await gw.request("DELETE", "/sessions/gone")
    assert response.code == 404
    assert body["code"] == "session_not_found"
    # A new call with the same id starts afresh.
    assert (await gw.call("fx", "counter", "gone"))[1]["result"] == "1"


@pytest_twisted.ensureDeferred
async def test_delete_fails_calls_in_flight_at_once(live: Any) -> None:
    gw = live({"fx": fixture_service()})
    await gw.call("fx", "echo", "busy", {"text": "warm"})
    pending = ensureDeferred(gw.call("fx", "sleep", "busy", {"seconds": 30}))
    await wait_until(lambda: bool(gw.gateway.sessions.get("busy").calls))
    response, _ = await gw.request("DELETE", "/sessions/busy")
    assert response.code == 200
    response, body = await pending
    assert response.code == 409
    assert body["code"] == "session_closed"


@pytest_twisted.ensureDeferred
async def test_idle_session_expires_and_its_child_exits(live: Any) -> None:
    gw = live({"fx": fixture_service()}, session={"cleanup_interval": 0.1})
    response, _ = await gw.call("fx", "counter", "brief", timeout=0.3)
    assert response.code == 200
    assert len(gw.children()) == 1
    await wait_until(lambda: gw.gateway.sessions.get("brief") is None, timeout=5)
    await wait_until(lambda: not gw.children(), timeout=5)
    response, body = await gw.request("GET", "/sessions")
    assert body == {}


# -- failures ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_crash_is_502_then_the_session_restarts(live: Any) -> None:
    gw = live({"fx": fixture_service()})
    assert (await gw.call("fx", "counter", "s"))[1]["result"] == "1"
    response, body = await gw.call("fx", "crash", "s")
    assert response.code == 502
    assert body["code"] == "child_failed"
    assert body["exit_status"] == 3
    response, body = await gw.call("fx", "counter", "s")
    assert response.code == 200
    assert body["session_restarted"] is True
    assert body["result"] == "1"
    response, body = await gw.call("fx", "counter", "s")
    assert body["session_restarted"] is False


@pytest_twisted.ensureDeferred
async def test_failing_start_is_503_with_backoff(live: Any) -> None:
    gw = live({"broken": fixture_service("--exit-at-start", "7")})
    response, body = await gw.call("broken", "echo", "s", {"text": "x"})
    assert response.code == 503
    assert body["code"] == "service_unavailable"
    assert body["exit_status"] == 7
    assert "boom: cannot start" in body["stderr_tail"]
    assert int(response.headers.getRawHeaders(b"retry-after")[0]) >= 1
    # Backing off: the retry is refused without spawning again.
    response, body = await gw.call("broken", "echo", "s", {"text": "x"})
    assert response.code == 503
    assert gw.gateway.services["broken"].spawns == 1
    _, services = await gw.request("GET", "/services")
    assert services["broken"]["state"] == "failing"
    assert gw.gateway.sessions.get("s") is None, "a session whose start failed is not kept"


@pytest_twisted.ensureDeferred
async def test_missing_program_is_503(live: Any) -> None:
    gw = live({"nope": {"command": ["/nonexistent/mcp-server"]}})
    response, body = await gw.call("nope", "echo", "s")
    assert response.code == 503
    assert body["code"] == "service_unavailable"


@pytest_twisted.ensureDeferred
async def test_handshake_timeout_is_503(live: Any) -> None:
    gw = live({"mute": fixture_service("--no-handshake-reply", handshake_timeout=1, discover_timeout=0.3)})
    response, body = await gw.call("mute", "echo", "s")
    assert response.code == 503
    assert "handshake" in body["error"]


@pytest_twisted.ensureDeferred
async def test_call_timeout_is_504_and_the_child_is_told(live: Any) -> None:
    gw = live({"fx": fixture_service(call_timeout=0.5)})
    response, body = await gw.call("fx", "sleep", "s", {"seconds": 10})
    assert response.code == 504
    assert body["code"] == "call_timeout"
    child = next(iter(gw.gateway.sessions.get("s").children.values()))
    await wait_until(lambda: "cancelled" in child.protocol.stderr.text(), timeout=5)
    response, body = await gw.call("fx", "echo", "s", {"text": "still here"})
    assert body["result"] == "still here"


@pytest_twisted.ensureDeferred
async def test_oversized_line_kills_the_child_with_a_clear_error(live: Any) -> None:
    gw = live({"fx": fixture_service(max_line_bytes=10000)})
    response, body = await gw.call("fx", "big", "s", {"bytes": 50000})
    assert response.code == 502
    assert "limit" in body["error"]
    response, body = await gw.call("fx", "echo", "s", {"text": "ok"})
    assert response.code == 200
    assert body["session_restarted"] is True


@pytest_twisted.ensureDeferred
async def test_session_limits_are_429_and_spawn_nothing(live: Any) -> None:
    gw = live({"fx": fixture_service()}, session={"max_total_sessions": 2, "max_sessions_per_service": 1})
    assert (await gw.call("fx", "echo", "first", {"text": "x"}))[0].code == 200
    response, body = await gw.call("fx", "echo", "second", {"text": "x"})
    assert response.code == 429
    assert body["code"] == "session_limit"
    assert response.headers.getRawHeaders(b"retry-after")
    assert len(gw.children()) == 1
    assert gw.gateway.sessions.get("second") is None
    await gw.request("DELETE", "/sessions/first")
    assert (await gw.call("fx", "echo", "second", {"text": "x"}))[0].code == 200


@pytest_twisted.ensureDeferred
async def test_shutdown_kills_stubborn_children_and_grandchildren(live: Any) -> None:
    gw = live({"stubborn": fixture_service("--ignore-eof", "--ignore-sigterm", close_grace=0.2)})
    await gw.call("stubborn", "spawn_grandchild", "s")
    # The grandchild's /proc entry may lag its pid being returned on a loaded machine.
    await wait_until(lambda: len(gw.children()) == 2)
    # The fixture's teardown stops the gateway and fails the test on any survivor.


# -- bad requests -----------------------------------------------------------------------------


async def _raw_call(gw: Any, data: bytes, content_type: bytes | None = b"application/json") -> tuple[int, Any]:
    headers = {b"Content-Type": [content_type]} if content_type else {}
    response = await treq.post(gw.url + "/services/fx/call", data=data, headers=headers, auth=AUTH)
    return response.code, json.loads(await treq.content(response))


@pytest_twisted.ensureDeferred
async def test_bad_bodies_are_400_with_codes_and_spawn_nothing(live: Any) -> None:
    gw = live({"fx": fixture_service()})
    cases: list[tuple[bytes, str]] = [
        (b"", "invalid_json"),
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_request"),
        (b'"text"', "invalid_request"),
        (b"\xff\xfe", "invalid_json"),
        (b"[" * 100000 + b"]" * 100000, "invalid_json"),
        (b'{"tool": 1' + b"0" * 5000 + b', "session_id": "s"}', "invalid_json"),
        (b'{"tool": NaN, "session_id": "s"}', "invalid_json"),
        (b'{"session_id": "s"}', "invalid_tool_name"),
        (b'{"tool": "echo"}', "invalid_session_id"),
        (b'{"tool": "../etc/passwd", "session_id": "s"}', "invalid_tool_name"),
        (b'{"tool": "echo", "session_id": "../../x"}', "invalid_session_id"),
        (b'{"tool": "echo", "session_id": "."}', "invalid_session_id"),
        (b'{"tool": "echo", "session_id": ".."}', "invalid_session_id"),
        (b'{"tool": "echo", "session_id": "' + b"s" * 129 + b'"}', "invalid_session_id"),
        (b'{"tool": "echo", "session_id": "s", "arguments": [1]}', "invalid_arguments"),
        (b'{"tool": "echo", "session_id": "s", "metadata": "x"}', "invalid_metadata"),
        (b'{"tool": "echo", "session_id": "s", "timeout": true}', "invalid_timeout"),
        (b'{"tool": "echo", "session_id": "s", "timeout": -1}', "invalid_timeout"),
        (b'{"tool": "echo", "session_id": "s", "timeout": "300"}', "invalid_timeout"),
        (b'{"tool": "echo", "session_id": "s", "timeout": 1e400}', "invalid_json"),
        (b'{"tool": "echo", "session_id": "s\\u0000"}', "invalid_session_id"),
    ]
    for data, code in cases:
        status, body = await _raw_call(gw, data)
        assert (status, body.get("code")) == (400, code), data[:80]
        assert isinstance(body["error"], str)
    status, body = await _raw_call(gw, b'{"tool": "echo", "session_id": "s"}', b"text/plain")
    assert (status, body["code"]) == (415, "unsupported_media_type")
    assert not gw.children()
    assert len(gw.gateway.sessions) == 0


@pytest_twisted.ensureDeferred
async def test_authentication(live: Any) -> None:
    gw = live({"fx": fixture_service()}, server={"auth_token": "s3cret-tok\u00e9n"})
    response, body = await gw.request("GET", "/services", auth=None)
    assert response.code == 401
    assert body["code"] == "unauthorized"
    challenges = response.headers.getRawHeaders(b"www-authenticate")
    assert any(c.startswith(b"Basic") for c in challenges)
    assert (await gw.request("GET", "/services", auth=(USER, "wrong")))[0].code == 401
    assert (await gw.request("GET", "/services", auth=(USER, PASSWORD)))[0].code == 200
    token = "s3cret-tok\u00e9n".encode()
    bearer = {b"Authorization": [b"Bearer " + token]}
    assert (await gw.request("GET", "/services", auth=None, headers=bearer))[0].code == 200
    wrong = {b"Authorization": [b"Bearer nope"]}
    assert (await gw.request("GET", "/services", auth=None, headers=wrong))[0].code == 401
    garbage = {b"Authorization": [b"Basic " + base64.b64encode(b"\xff\xfe")]}
    assert (await gw.request("GET", "/sessions", auth=None, headers=garbage))[0].code == 401
    for method, path in (("DELETE", "/sessions/x"), ("GET", "/services/fx/tools"), ("POST", "/services/fx/call")):
        response, body = await gw.request(method, path, auth=None)
        assert response.code == 401, path


@pytest_twisted.ensureDeferred
async def test_unknown_routes_methods_and_names(live: Any) -> None:
    gw = live({"fx": fixture_service()})
    response, body = await gw.request("GET", "/nope")
    assert (response.code, body["code"]) == (404, "not_found")
    response, body = await gw.request("GET", "/services/ghost/tools")
    assert (response.code, body["code"]) == (404, "service_not_found")
    response, body = await gw.request("POST", "/services/ghost/call", {"tool": "x", "session_id": "s"})
    assert (response.code, body["code"]) == (404, "service_not_found")
    response, body = await gw.request("DELETE", "/services/fx/tools")
    assert (response.code, body["code"]) == (405, "method_not_allowed")
    assert b"GET" in response.headers.getRawHeaders(b"allow")[0]
    response, body = await gw.request("GET", "/services/fx/call")
    assert response.code == 405
    response, body = await gw.request("GET", "/services/b%20d/tools")
    assert (response.code, body["code"]) == (400, "invalid_service_name")


class _Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        from twisted.internet.defer import Deferred

        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(self.data)


async def _raw_http(gw: Any, request: bytes) -> bytes:
    port = gw.port.getHost().port
    protocol = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), _Collect())
    protocol.transport.write(request)
    return await protocol.done


@pytest_twisted.ensureDeferred
async def test_oversized_bodies_are_413_before_buffering(live: Any) -> None:
    gw = live({"fx": fixture_service()}, server={"max_body_bytes": 1000})
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode())
    head = (
        b"POST /services/fx/call HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + auth + b"\r\n"
        b"Content-Type: application/json\r\n"
    )
    # Declared too large: answered without sending the body.
    answer = await _raw_http(gw, head + b"Content-Length: 100000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"code": "body_too_large"' in answer
    # Chunked, growing past the limit.
    chunk = b"x" * 600
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n" + (b"258\r\n" + chunk + b"\r\n") * 3 + b"0\r\n\r\n"
    answer = await _raw_http(gw, chunked)
    assert answer.startswith(b"HTTP/1.1 413")
    assert not gw.children()
    # Within the limit still works.
    response, body = await gw.call("fx", "echo", "s", {"text": "small"})
    assert (response.code, body["result"]) == (200, "small")


@pytest_twisted.ensureDeferred
async def test_slow_clients_and_malformed_http_get_json_errors(live: Any) -> None:
    gw = live({"fx": fixture_service()}, server={"request_timeout": 0.5, "max_header_bytes": 2000})
    # slowloris: a request that never completes is answered 408 and closed.
    port = gw.port.getHost().port
    protocol = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), _Collect())
    protocol.transport.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    for _ in range(3):
        await sleep(0.2)
        if not protocol.done.called:
            protocol.transport.write(b"X-Drip: 1\r\n")
    answer = await protocol.done
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"code": "request_timeout"' in answer
    # Too many header bytes, and a request line that is not HTTP: JSON 400s.
    answer = await _raw_http(gw, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    assert b'"code": "bad_http"' in answer
    answer = await _raw_http(gw, b"NONSENSE\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"application/json" in answer
    # A normal request still works, and keep-alive is untouched by the deadline.
    response, body = await gw.request("GET", "/health", auth=None)
    assert (response.code, body["status"]) == (200, "healthy")
