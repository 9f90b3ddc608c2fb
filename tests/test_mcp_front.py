"""
The MCP front door (C{/mcp}, C{/services/<name>/mcp}) end to end: a gateway
on a real socket with real children, driven by the official MCP Python SDK
client (legacy and 2026-07-28) running in a thread, and by raw HTTP for
every wire rule.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import mcp_types as types
import pytest
import pytest_twisted
import treq
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from mcpgateway.front.catalog import MAX_NAME, build_catalog, public_name
from mcpgateway.front.server import McpFront
from mcpgateway.http.streamable import McpEndpoint
from mcpgateway.policy.auth import hash_token

from .conftest import AUTH, PASSWORD, PYTHON, SDK_SERVER, USER, fixture_service, sleep, wait_until

T = TypeVar("T")

BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
MODES = ["legacy", "2026-07-28"]
MODERN = "2026-07-28"
LEGACY = "2025-11-25"
VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
POST_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


# -- helpers ---------------------------------------------------------------------------------


def in_thread(coroutine: Awaitable[T]) -> Deferred[T]:
    """
    Run an asyncio coroutine (the SDK client) in a thread, so the reactor keeps serving.
    """
    return deferToThread(asyncio.run, coroutine)  # type: ignore[arg-type]


@asynccontextmanager
async def connect(url: str, mode: str, authorization: str = BASIC, **options: Any) -> AsyncIterator[Client]:
    """
    An SDK client of C{url} in C{mode}, with the test credentials (or the
    C{Authorization} header value C{authorization}, e.g. another principal's
    C{"Bearer <token>"}).
    """
    async with (
        create_mcp_http_client(headers={"Authorization": authorization}) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, read_timeout_seconds=30, **options) as client,
    ):
        yield client


def endpoint_of(gw: Any) -> McpEndpoint:
    """
    @return: The MCP endpoint of a live gateway.
    """
    endpoint = gw.app.mcp_endpoint
    assert isinstance(endpoint, McpEndpoint)
    return endpoint


@pytest.fixture
def stderr_lines() -> Iterator[list[str]]:
    """
    The children's stderr lines, as the gateway logs them.
    """
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if str(event.get("log_namespace", "")).startswith("mcpgateway.child.") and "line" in event:
            lines.append(str(event["line"]))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def sse(raw: bytes) -> list[dict[str, Any]]:
    """
    @return: The JSON messages of an SSE body.
    """
    messages = []
    for block in raw.decode().split("\n\n"):
        data = [line[5:].strip() for line in block.splitlines() if line.startswith("data:")]
        if data:
            messages.append(json.loads("\n".join(data)))
    return messages


async def http(
    gw: Any, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, auth: Any = AUTH
) -> tuple[Any, bytes]:
    """
    A raw request; returns the response and its body.
    """
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    response = await treq.request(method, gw.url + path, data=data, headers=headers or {}, auth=auth)
    return response, await treq.content(response)


def decoded(raw: bytes) -> Any:
    return json.loads(raw) if raw else None


async def initialize(gw: Any, path: str = "/mcp", capabilities: dict[str, Any] | None = None) -> str:
    """
    Open a legacy session with raw HTTP; returns its id.
    """
    body = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": LEGACY, "capabilities": capabilities or {}, "clientInfo": {"name": "raw"}},
    }
    response, raw = await http(gw, "POST", path, body, POST_HEADERS)
    assert response.code == 200, raw
    assert decoded(raw)["result"]["protocolVersion"] == LEGACY
    session = response.headers.getRawHeaders(b"mcp-session-id")[0].decode()
    response, _ = await http(
        gw, "POST", path, {"jsonrpc": "2.0", "method": "notifications/initialized"}, legacy_headers(session)
    )
    assert response.code == 202
    return session


def legacy_headers(session: str | None, **extra: str) -> dict[str, str]:
    headers = {**POST_HEADERS, "MCP-Protocol-Version": LEGACY, **extra}
    if session is not None:
        headers["Mcp-Session-Id"] = session
    return headers


def modern_request(method: str, params: dict[str, Any] | None = None, request_id: Any = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": method,
        "params": {**(params or {}), "_meta": {VERSION_KEY: MODERN, CAPABILITIES_KEY: {}}},
    }


def modern_headers(method: str, name: str | None = None, **extra: str) -> dict[str, str]:
    headers = {**POST_HEADERS, "MCP-Protocol-Version": MODERN, "Mcp-Method": method, **extra}
    if name is not None:
        headers["Mcp-Name"] = name
    return headers


def two_services() -> dict[str, dict[str, Any]]:
    return {"a": fixture_service(), "b": fixture_service("--modern")}


# -- the SDK client, both eras ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_tools_of_two_services_listed_and_called(live: Any, mode: str) -> None:
    gw = live(two_services())

    async def use() -> dict[str, Any]:
        async with connect(gw.url + "/mcp", mode) as client:
            listed = await client.list_tools()
            added = await client.call_tool("a.add", {"a": 2, "b": 3})
            echoed = await client.call_tool("b.echo", {"text": "héllo"})
            failed = await client.call_tool("a.fail", {})
            image = await client.call_tool("b.image", {})
            with pytest.raises(MCPError) as rpc:
                await client.call_tool("a.rpc_error", {})
            with pytest.raises(MCPError) as unknown:
                await client.call_tool("nowhere.echo", {})
            return {
                "version": client.protocol_version,
                "server": client.server_info.name if client.server_info else None,
                "names": [tool.name for tool in listed.tools],
                "added": added,
                "echoed": echoed,
                "failed": failed,
                "image": image,
                "rpc": rpc.value.error,
                "unknown": unknown.value.error,
            }

    out = await in_thread(use())
    assert out["version"] == (LEGACY if mode == "legacy" else MODERN)
    names = out["names"]
    assert {"a.echo", "a.add", "a.sleep", "b.echo", "b.add", "b.notify"} <= set(names)
    assert len(names) == len(set(names))
    assert all(name.startswith(("a.", "b.")) for name in names)
    assert out["added"].structured_content == {"sum": 5}
    assert out["added"].content[0].text == "5"
    assert out["added"].is_error is False
    assert out["echoed"].content[0].text == "héllo"
    assert out["failed"].is_error is True
    assert out["failed"].content[0].text == "this tool always fails"
    assert out["image"].content[0].type == "image"
    assert out["image"].content[0].mime_type == "image/png"
    assert (out["rpc"].code, out["rpc"].message, out["rpc"].data) == (-32042, "custom failure", {"why": "testing"})
    assert out["unknown"].code == -32602


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_state_is_kept_across_calls_in_one_session(live: Any, mode: str) -> None:
    gw = live({"a": fixture_service()})

    async def count(calls: int) -> list[str]:
        async with connect(gw.url + "/mcp", mode) as client:
            return [(await client.call_tool("a.counter", {})).content[0].text for _ in range(calls)]  # type: ignore[union-attr]

    assert await in_thread(count(3)) == ["1", "2", "3"]
    if mode == "legacy":
        # A new session is a new child; the old one was closed by the client's DELETE.
        await wait_until(lambda: len(gw.children()) == 0)
        assert await in_thread(count(1)) == ["1"]
        _, sessions = await gw.request("GET", "/sessions")
        assert sessions == {}
    else:
        # No session on the wire: the principal's modern session keeps its child.
        assert await in_thread(count(1)) == ["4"]
        _, sessions = await gw.request("GET", "/sessions")
        assert list(sessions) == [f"mcp-modern.{USER}"]
        assert sessions[f"mcp-modern.{USER}"]["services"] == ["a"]
        assert sessions[f"mcp-modern.{USER}"]["metadata"]["protocol"] == MODERN
        response, _ = await gw.request("DELETE", f"/sessions/mcp-modern.{USER}")
        assert response.code == 200
        await wait_until(lambda: len(gw.children()) == 0)
        assert await in_thread(count(1)) == ["1"]


@pytest_twisted.ensureDeferred
async def test_legacy_session_is_a_gateway_session(live: Any) -> None:
    gw = live({"a": fixture_service()})
    seen: dict[str, Any] = {}

    async def use() -> None:
        async with connect(gw.url + "/mcp", "legacy") as client:
            await client.call_tool("a.echo", {"text": "x"})
            seen["sessions"] = await gw_sessions()

    async def gw_sessions() -> Any:
        return {session.id: session.describe(0) for session in gw.gateway.sessions}

    await in_thread(use())
    sessions = seen["sessions"]
    assert len(sessions) == 1
    (session_id, view), *_ = sessions.items()
    assert session_id.startswith("mcp-")
    assert view["services"] == ["a"]
    assert view["owner"] == USER
    assert view["metadata"]["transport"] == "mcp"
    assert view["metadata"]["endpoint"] == "/mcp"
    # The client's DELETE at exit closed it and its child.
    assert len(gw.gateway.sessions) == 0
    await wait_until(lambda: not gw.children())


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_progress_reaches_the_client(live: Any, mode: str) -> None:
    gw = live({"a": fixture_service()})

    async def use() -> tuple[Any, list[tuple[float, float | None, str | None]]]:
        updates: list[tuple[float, float | None, str | None]] = []

        async def progress(value: float, total: float | None, message: str | None) -> None:
            updates.append((value, total, message))

        async with connect(gw.url + "/mcp", mode) as client:
            result = await client.call_tool("a.slow_progress", {"steps": 3}, progress_callback=progress)
            return result, updates

    result, updates = await in_thread(use())
    assert result.content[0].text == "done 3"
    assert updates == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_a_cancelled_call_stops_in_the_child(live: Any, mode: str, stderr_lines: list[str]) -> None:
    gw = live({"a": fixture_service()})

    async def use() -> str:
        async with connect(gw.url + "/mcp", mode) as client:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.call_tool("a.sleep", {"seconds": 30}), 0.5)
            for _ in range(200):
                if any(line.startswith("cancelled") for line in stderr_lines):
                    break
                await asyncio.sleep(0.05)
            return (await client.call_tool("a.echo", {"text": "still here"})).content[0].text  # type: ignore[union-attr]

    assert await in_thread(use()) == "still here"
    assert any(line.startswith("cancelled") for line in stderr_lines), stderr_lines


@pytest_twisted.ensureDeferred
async def test_list_changed_reaches_a_client_with_a_get_stream(live: Any) -> None:
    gw = live(two_services())

    async def use() -> tuple[list[str], list[str]]:
        notified: list[str] = []
        changed = asyncio.Event()

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                notified.append(message.method)
                changed.set()

        async with connect(gw.url + "/mcp", "legacy", message_handler=on_message) as client:
            before = [tool.name for tool in (await client.list_tools()).tools]
            for _ in range(200):  # the SDK opens its GET stream in the background
                if any(c.stream is not None for c in endpoint_of(gw).front.clients.values()):
                    break
                await asyncio.sleep(0.02)
            await client.call_tool("b.notify", {})
            await asyncio.wait_for(changed.wait(), 10)
            after = [tool.name for tool in (await client.list_tools(cache_mode="refresh")).tools]
            assert "b.late_tool" not in before
            late = await client.call_tool("b.late_tool", {})
            return notified, [*after, late.content[0].text]  # type: ignore[union-attr]

    notified, after = await in_thread(use())
    assert notified == ["notifications/tools/list_changed"]
    assert "b.late_tool" in after
    assert after[-1] == "late_tool"


async def call_once(gw: Any, tool: str, mode: str = "legacy", path: str = "/mcp", **arguments: Any) -> str:
    async with connect(gw.url + path, mode) as client:
        result = await client.call_tool(tool, arguments)
        return result.content[0].text  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_sampling_request_of_a_child_reaches_a_legacy_client(live: Any) -> None:
    gw = live({"a": fixture_service()})

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="hi"), model="test-model"
        )

    async def use(**options: Any) -> Any:
        async with connect(gw.url + "/mcp", "legacy", **options) as client:
            return await client.call_tool("a.ask", {})

    answered = await in_thread(use(sampling_callback=sampling))
    assert answered.content[0].text == "sampling ok; ping ok"
    assert answered.structured_content["sampling"]["result"]["model"] == "test-model"
    # Without the capability declared, the gateway answers for the client: no hang.
    refused = await in_thread(use())
    assert refused.content[0].text == "sampling error -32601; ping ok"


@pytest_twisted.ensureDeferred
async def test_sampling_request_of_a_child_is_refused_for_a_modern_client(live: Any) -> None:
    gw = live({"a": fixture_service()})
    assert await in_thread(call_once(gw, "a.ask", MODERN)) == "sampling error -32601; ping ok"


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_single_service_endpoint_keeps_the_childs_names(live: Any, mode: str) -> None:
    gw = live(two_services())

    async def use() -> tuple[list[str], str]:
        async with connect(gw.url + "/services/b/mcp", mode) as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            echoed = (await client.call_tool("echo", {"text": "plain"})).content[0].text  # type: ignore[union-attr]
            return names, echoed

    names, echoed = await in_thread(use())
    assert "echo" in names and "notify" in names
    assert not any("." in name for name in names)
    assert echoed == "plain"


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_tools_list_is_paginated_to_the_client(live: Any, mode: str, monkeypatch: Any) -> None:
    monkeypatch.setattr(McpFront, "page_size", 4)
    gw = live({"a": fixture_service("--tools-pages", "2"), "b": fixture_service()})

    async def use() -> tuple[int, list[str]]:
        async with connect(gw.url + "/mcp", mode) as client:
            names: list[str] = []
            pages = 0
            cursor = None
            while True:
                page = await client.list_tools(cursor=cursor)
                pages += 1
                assert len(page.tools) <= 4
                names += [tool.name for tool in page.tools]
                cursor = page.next_cursor
                if cursor is None:
                    return pages, names

    pages, names = await in_thread(use())
    assert {"a.page1_tool1", "a.page2_tool2", "a.echo", "b.echo"} <= set(names)
    assert len(names) == len(set(names))
    assert pages == -(-len(names) // 4)


@pytest_twisted.ensureDeferred
async def test_long_names_are_shortened_deterministically(live: Any) -> None:
    service = "s" * 55
    gw = live({service: fixture_service()})

    async def use() -> tuple[list[str], str]:
        async with connect(gw.url + "/mcp", "legacy") as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            progress = public_name(service, "slow_progress")
            done = (await client.call_tool(progress, {"steps": 1})).content[0].text  # type: ignore[union-attr]
            return names, done

    names, done = await in_thread(use())
    assert all(len(name) <= MAX_NAME for name in names)
    assert len(names) == len(set(names))
    assert f"{service}.echo" in names
    assert public_name(service, "slow_progress") in names
    assert len(public_name(service, "slow_progress")) == MAX_NAME
    assert done == "done 1"


def test_naming_is_deterministic_and_collision_free() -> None:
    long_tool = "t" * 70
    shortened = public_name("a", long_tool)
    assert len(shortened) == MAX_NAME
    assert shortened == public_name("a", long_tool)
    assert shortened != public_name("b", long_tool)
    # A tool whose plain name equals another's shortened name: the plain one keeps it.
    impostor = shortened[2:]
    catalog = build_catalog(
        [("a", [{"name": long_tool}, {"name": impostor}, {"name": impostor}, {"name": 3}])], scoped=False
    )
    publics = [entry.public for entry in catalog]
    assert len(publics) == len(set(publics)) == 2
    by_name = {entry.name: entry.public for entry in catalog}
    assert by_name[impostor] == shortened
    assert by_name[long_tool] == public_name("a", long_tool, 1)
    assert all(len(public) <= MAX_NAME for public in publics)
    scoped = build_catalog([("a", [{"name": long_tool}, {"name": "x"}])], scoped=True)
    assert [entry.public for entry in scoped] == [long_tool, "x"]
    assert scoped[1].view() == {"name": "x"}
    assert [entry.view()["name"] for entry in catalog] == [entry.public for entry in catalog]


# -- SDK servers as children, and the todo example ---------------------------------------------------


def sdk_services() -> dict[str, dict[str, Any]]:
    return {
        "sdk": {"command": [PYTHON, SDK_SERVER]},
        "sdk_legacy": {"command": [PYTHON, SDK_SERVER], "protocol": "legacy"},
    }


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_sdk_server_children_in_both_eras(live: Any, mode: str) -> None:
    gw = live(sdk_services())

    async def use() -> dict[str, Any]:
        async with connect(gw.url + "/mcp", mode) as client:
            out: dict[str, Any] = {}
            for service in ("sdk", "sdk_legacy"):
                await client.call_tool(f"{service}.remember", {"key": "k", "value": service})
                out[service] = (await client.call_tool(f"{service}.recall", {"key": "k"})).content[0].text  # type: ignore[union-attr]
            out["shout"] = (await client.call_tool("sdk.shout", {"text": "hey"})).content[0].text  # type: ignore[union-attr]
            out["missing"] = await client.call_tool("sdk_legacy.recall", {"key": "nope"})
            return out

    out = await in_thread(use())
    assert out["sdk"] == "sdk"
    assert out["sdk_legacy"] == "sdk_legacy"
    assert out["shout"] == "HEY"
    assert out["missing"].is_error is True
    eras = {name: service.era.name if service.era else None for name, service in gw.gateway.services.items()}
    assert eras == {"sdk": "modern", "sdk_legacy": "legacy"}


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_prompts_and_resources_pass_through_namespaced(live: Any, mode: str) -> None:
    gw = live({**sdk_services(), "fx": fixture_service()})

    async def use() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with connect(gw.url + "/mcp", mode) as client:
            await client.call_tool("sdk.remember", {"key": "colour", "value": "blue"})
            out["prompts"] = [prompt.name for prompt in (await client.list_prompts()).prompts]
            prompt = await client.get_prompt("sdk.greet", {"name": "Ada"})
            out["prompt"] = prompt.messages[0].content.text  # type: ignore[union-attr]
            out["resources"] = [str(resource.uri) for resource in (await client.list_resources()).resources]
            read = await client.read_resource("mcpgw://sdk/memo://notes")
            out["read"] = [(str(item.uri), item.text) for item in read.contents]  # type: ignore[union-attr]
            with pytest.raises(MCPError) as bad:
                await client.read_resource("memo://notes")
            out["bad"] = bad.value.error.code
        async with connect(gw.url + "/services/sdk/mcp", mode) as client:
            out["scoped_prompts"] = [prompt.name for prompt in (await client.list_prompts()).prompts]
            out["scoped_resources"] = [str(r.uri) for r in (await client.list_resources()).resources]
        return out

    out = await in_thread(use())
    assert set(out["prompts"]) == {"sdk.greet", "sdk_legacy.greet"}
    assert out["prompt"] == "Please greet Ada."
    assert set(out["resources"]) == {"mcpgw://sdk/memo://notes", "mcpgw://sdk_legacy/memo://notes"}
    assert out["read"] == [("mcpgw://sdk/memo://notes", "colour=blue")]
    assert out["bad"] == -32002
    assert out["scoped_prompts"] == ["greet"]
    assert out["scoped_resources"] == ["memo://notes"]


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_todo_example(live: Any, mode: str) -> None:
    gw = live({"todo": {"command": [PYTHON, "-m", "mcpgateway.examples.todo_server"]}})

    async def use() -> tuple[list[str], str, Any]:
        async with connect(gw.url + "/services/todo/mcp", mode) as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            added = (await client.call_tool("add_todo", {"text": "buy milk"})).content[0].text  # type: ignore[union-attr]
            listed = await client.call_tool("list_todos", {})
            return names, added, listed

    names, added, listed = await in_thread(use())
    assert {"add_todo", "list_todos", "complete_todo", "delete_todo"} <= set(names)
    assert "buy milk" in added or "1" in added
    assert "buy milk" in json.dumps([block.model_dump() for block in listed.content]) + json.dumps(
        listed.structured_content
    )


# -- raw HTTP: answers and wire errors --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_legacy_answers_json_or_sse(live: Any) -> None:
    gw = live({"a": fixture_service()})
    session = await initialize(gw)
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "a.echo", "arguments": {"text": "j"}}}
    response, raw = await http(gw, "POST", "/mcp", call, legacy_headers(session))
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert response.headers.getRawHeaders(b"mcp-session-id") == [session.encode()]
    assert decoded(raw) == {
        "jsonrpc": "2.0",
        "id": 7,
        "result": {"content": [{"type": "text", "text": "j"}], "isError": False},
    }
    progress = {
        "jsonrpc": "2.0",
        "id": "p",
        "method": "tools/call",
        "params": {"name": "a.slow_progress", "arguments": {"steps": 2}, "_meta": {"progressToken": "tok"}},
    }
    response, raw = await http(gw, "POST", "/mcp", progress, legacy_headers(session))
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"text/event-stream"]
    messages = sse(raw)
    assert [m.get("method") for m in messages] == ["notifications/progress", "notifications/progress", None]
    assert messages[0]["params"] == {"progressToken": "tok", "progress": 1, "total": 2, "message": "step 1"}
    assert messages[-1]["id"] == "p"
    assert messages[-1]["result"]["content"][0]["text"] == "done 2"
    # JSON-RPC errors of the child keep their code and data.
    rpc = {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "a.rpc_error"}}
    _, raw = await http(gw, "POST", "/mcp", rpc, legacy_headers(session))
    assert decoded(raw)["error"] == {"code": -32042, "message": "custom failure", "data": {"why": "testing"}}
    ping = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
    _, raw = await http(gw, "POST", "/mcp", ping, legacy_headers(session))
    assert decoded(raw) == {"jsonrpc": "2.0", "id": 9, "result": {}}
    unknown = {"jsonrpc": "2.0", "id": 10, "method": "no/such"}
    _, raw = await http(gw, "POST", "/mcp", unknown, legacy_headers(session))
    assert decoded(raw)["error"]["code"] == -32601
    response, raw = await http(gw, "DELETE", "/mcp", headers=legacy_headers(session))
    assert response.code == 200
    await wait_until(lambda: not gw.children())
    response, _ = await http(gw, "POST", "/mcp", ping, legacy_headers(session))
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_legacy_wire_errors(live: Any) -> None:
    gw = live({"a": fixture_service()})
    session = await initialize(gw)
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}

    async def status(method: str, body: Any, headers: dict[str, str], path: str = "/mcp") -> tuple[int, Any]:
        response, raw = await http(gw, method, path, body, headers)
        return response.code, decoded(raw) if raw.startswith(b"{") else raw

    # 400: no session header; 404: unknown session.
    code, body = await status("POST", ping, legacy_headers(None))
    assert code == 400 and body["error"]["code"] == -32600
    code, body = await status("POST", ping, legacy_headers("mcp-nosuchsession"))
    assert code == 404
    code, _ = await status("GET", None, {"Accept": "text/event-stream", "Mcp-Session-Id": "mcp-nosuch"})
    assert code == 404
    code, _ = await status("DELETE", None, {"Mcp-Session-Id": "mcp-nosuch"})
    assert code == 404
    # 400: unsupported protocol version.
    code, body = await status("POST", ping, legacy_headers(session, **{"MCP-Protocol-Version": "1999-01-01"}))
    assert code == 400 and body["error"]["code"] == -32022
    # 406: Accept must list both on POST, the event stream on GET.
    code, _ = await status("POST", ping, {**legacy_headers(session), "Accept": "application/json"})
    assert code == 406
    code, _ = await status("POST", ping, {**legacy_headers(session), "Accept": "text/event-stream"})
    assert code == 406
    code, _ = await status("GET", None, {"Accept": "application/json", "Mcp-Session-Id": session})
    assert code == 406
    code, _ = await status("POST", ping, {**legacy_headers(session), "Accept": "*/*"})
    assert code == 200
    # 415, and 400 for what is not one JSON-RPC message.
    code, _ = await status("POST", b"{}", {**legacy_headers(session), "Content-Type": "text/plain"})
    assert code == 415
    code, body = await status("POST", b"{nope", legacy_headers(session))
    assert code == 400 and body["error"]["code"] == -32700
    code, body = await status("POST", [ping], legacy_headers(session))
    assert code == 400 and body["error"]["code"] == -32600
    # A session of /mcp is unknown at /services/a/mcp; an unknown service is 404.
    code, _ = await status("POST", ping, legacy_headers(session), "/services/a/mcp")
    assert code == 404
    code, _ = await status("POST", ping, legacy_headers(session), "/services/nope/mcp")
    assert code == 404
    # Other methods: 405 with Allow.
    response, _ = await http(gw, "PUT", "/mcp", ping, legacy_headers(session))
    assert response.code == 405
    # 401 with a challenge.
    response, _ = await http(gw, "POST", "/mcp", ping, legacy_headers(session), auth=None)
    assert response.code == 401
    assert response.headers.getRawHeaders(b"www-authenticate")
    response, _ = await http(gw, "POST", "/mcp", ping, legacy_headers(session), auth=(USER, "wrong"))
    assert response.code == 401


@pytest_twisted.ensureDeferred
async def test_origin_is_validated(live: Any) -> None:
    gw = live({"a": fixture_service()}, server={"allowed_origins": ["https://app.example"]})
    body = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": LEGACY}}
    for origin, expected in [
        ("https://evil.example", 403),
        ("null", 403),
        ("https://app.example", 200),
        (gw.url, 200),  # the gateway's own origin
    ]:
        response, raw = await http(gw, "POST", "/mcp", body, {**POST_HEADERS, "Origin": origin})
        assert response.code == expected, (origin, raw)
    # Refused before authentication.
    response, raw = await http(gw, "POST", "/mcp", body, {**POST_HEADERS, "Origin": "https://evil.example"}, auth=None)
    assert response.code == 403
    assert decoded(raw)["error"]["code"] == -32600
    # An origin that is not even a URL is foreign too (not a 500).
    for malformed in ("http://[::1", "http://[zz]", "https://[::1]:x"):
        response, raw = await http(gw, "POST", "/mcp", body, {**POST_HEADERS, "Origin": malformed})
        assert (response.code, decoded(raw)["error"]["code"]) == (403, -32600), malformed
    await gw.gateway.stop()  # the two sessions opened above


@pytest_twisted.ensureDeferred
async def test_modern_wire_rules(live: Any) -> None:
    gw = live({"a": fixture_service()})

    async def post(body: Any, headers: dict[str, str]) -> tuple[int, Any]:
        response, raw = await http(gw, "POST", "/mcp", body, headers)
        return response.code, decoded(raw)

    discover = modern_request("server/discover")
    code, body = await post(discover, modern_headers("server/discover"))
    assert code == 200
    result = body["result"]
    assert result["supportedVersions"] == [MODERN]
    assert result["resultType"] == "complete"
    assert (result["ttlMs"], result["cacheScope"]) == (0, "private")
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "mcpgateway"
    code, body = await post(modern_request("tools/list"), modern_headers("tools/list"))
    assert code == 200
    assert (body["result"]["resultType"], body["result"]["ttlMs"], body["result"]["cacheScope"]) == (
        "complete",
        0,
        "private",
    )
    call = modern_request("tools/call", {"name": "a.echo", "arguments": {"text": "m"}})
    code, body = await post(call, modern_headers("tools/call", "a.echo"))
    assert code == 200
    assert body["result"] == {"content": [{"type": "text", "text": "m"}], "isError": False, "resultType": "complete"}
    # -32020: headers that disagree with the body.
    code, body = await post(call, modern_headers("tools/list", "a.echo"))
    assert (code, body["error"]["code"]) == (400, -32020)
    code, body = await post(call, modern_headers("tools/call", "a.add"))
    assert (code, body["error"]["code"]) == (400, -32020)
    code, body = await post(call, modern_headers("tools/call"))
    assert (code, body["error"]["code"]) == (400, -32020)
    mismatched = modern_request("tools/list")
    mismatched["params"]["_meta"][VERSION_KEY] = "2027-01-01"
    code, body = await post(mismatched, modern_headers("tools/list"))
    assert (code, body["error"]["code"]) == (400, -32020)
    code, body = await post(call, {**modern_headers("tools/call"), "Mcp-Name": "=?base64?YS5lY2hv?="})
    assert code == 200  # "a.echo" in the header's base64 form
    # -32602: the envelope is required.
    bare = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    code, body = await post(bare, modern_headers("tools/list"))
    assert (code, body["error"]["code"]) == (400, -32602)
    # 404 for an unknown method; errors of the child keep their code and data.
    code, body = await post(modern_request("no/such"), modern_headers("no/such"))
    assert (code, body["error"]["code"]) == (404, -32601)
    rpc = modern_request("tools/call", {"name": "a.rpc_error"})
    code, body = await post(rpc, modern_headers("tools/call", "a.rpc_error"))
    assert body["error"] == {"code": -32042, "message": "custom failure", "data": {"why": "testing"}}
    # A notification is acknowledged; GET and DELETE are 405.
    response, _ = await http(
        gw, "POST", "/mcp", {"jsonrpc": "2.0", "method": "notifications/x"}, modern_headers("notifications/x")
    )
    assert response.code == 202
    for method in ("GET", "DELETE"):
        response, _ = await http(
            gw, method, "/mcp", headers={"Accept": "text/event-stream", "MCP-Protocol-Version": MODERN}
        )
        assert response.code == 405
        assert response.headers.getRawHeaders(b"allow") == [b"POST"]
    code, _ = await post(discover, {**modern_headers("server/discover"), "Accept": "application/json"})
    assert code == 406


@pytest_twisted.ensureDeferred
async def test_closing_the_response_stream_cancels_the_call(live: Any, stderr_lines: list[str]) -> None:
    gw = live({"a": fixture_service()})
    session = await initialize(gw)
    call = {
        "jsonrpc": "2.0",
        "id": 5,
        "method": "tools/call",
        "params": {"name": "a.sleep", "arguments": {"seconds": 30}},
    }
    pending = treq.post(gw.url + "/mcp", data=json.dumps(call).encode(), headers=legacy_headers(session), auth=AUTH)
    await wait_until(lambda: any(s.calls for s in gw.gateway.sessions if s.children))
    pending.cancel()
    pending.addErrback(lambda failure: None)
    await wait_until(lambda: any(line.startswith("cancelled") for line in stderr_lines))
    _response, raw = await http(
        gw, "POST", "/mcp", {"jsonrpc": "2.0", "id": 6, "method": "ping"}, legacy_headers(session)
    )
    assert decoded(raw)["result"] == {}


@pytest_twisted.ensureDeferred
async def test_legacy_cancellation_notification_answers_the_request(live: Any, stderr_lines: list[str]) -> None:
    gw = live({"a": fixture_service()})
    session = await initialize(gw)
    call = {
        "jsonrpc": "2.0",
        "id": 5,
        "method": "tools/call",
        "params": {"name": "a.sleep", "arguments": {"seconds": 30}},
    }
    pending = treq.post(gw.url + "/mcp", data=json.dumps(call).encode(), headers=legacy_headers(session), auth=AUTH)
    await wait_until(lambda: any(s.calls for s in gw.gateway.sessions if s.children))
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}}
    response, _ = await http(gw, "POST", "/mcp", cancel, legacy_headers(session))
    assert response.code == 202
    answer = decoded(await treq.content(await pending))
    assert answer == {"jsonrpc": "2.0", "id": 5, "error": {"code": -32800, "message": "Request cancelled"}}
    await wait_until(lambda: any(line.startswith("cancelled") for line in stderr_lines))


@pytest_twisted.ensureDeferred
async def test_idle_session_expires(live: Any) -> None:
    gw = live({"a": fixture_service()}, session={"default_timeout": 2, "cleanup_interval": 0.1})
    session = await initialize(gw)
    _, sessions = await gw.request("GET", "/sessions")
    assert session in sessions
    await wait_until(lambda: len(gw.gateway.sessions) == 0)
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    response, _ = await http(gw, "POST", "/mcp", ping, legacy_headers(session))
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_an_open_stream_keeps_its_session_until_it_is_closed(live: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(McpEndpoint, "keepalive", 0.1)
    gw = live({"a": fixture_service()}, session={"default_timeout": 2, "cleanup_interval": 0.1})
    session = await initialize(gw)
    response = await treq.get(
        gw.url + "/mcp", headers={"Accept": "text/event-stream", "Mcp-Session-Id": session}, auth=AUTH
    )
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"text/event-stream"]
    assert response.headers.getRawHeaders(b"mcp-session-id") == [session.encode()]
    body = treq.content(response)  # fires when the stream ends
    await sleep(3)  # past default_timeout: the open stream keeps the session
    assert not body.called
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    answer, _ = await http(gw, "POST", "/mcp", ping, legacy_headers(session))
    assert answer.code == 200
    # Closing the session (here through the REST API) ends its stream.
    closed, _ = await gw.request("DELETE", f"/sessions/{session}")
    assert closed.code == 200
    raw = await body
    assert raw.startswith(b": stream open")
    assert b": keepalive" in raw
    answer, _ = await http(gw, "POST", "/mcp", ping, legacy_headers(session))
    assert answer.code == 404


@pytest_twisted.ensureDeferred
async def test_sessions_belong_to_their_principal(live: Any) -> None:
    principals = [
        {"name": "one", "role": "agent", "token_hash": hash_token("token-one")},
        {"name": "two", "role": "agent", "token_hash": hash_token("token-two")},
    ]
    gw = live({"a": fixture_service()}, server={"principals": principals})
    body = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": LEGACY}}
    one = {**POST_HEADERS, "Authorization": "Bearer token-one"}
    two = {**POST_HEADERS, "Authorization": "Bearer token-two"}
    response, _ = await http(gw, "POST", "/mcp", body, one, auth=None)
    session = response.headers.getRawHeaders(b"mcp-session-id")[0].decode()
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    response, _ = await http(gw, "POST", "/mcp", ping, {**two, "Mcp-Session-Id": session}, auth=None)
    assert response.code == 404
    response, _ = await http(gw, "POST", "/mcp", ping, {**one, "Mcp-Session-Id": session}, auth=None)
    assert response.code == 200
    # An admin (the seed user) may use it, as with REST sessions.
    response, _ = await http(gw, "POST", "/mcp", ping, legacy_headers(session))
    assert response.code == 200
    # Modern sessions are per principal.
    modern = modern_request("tools/call", {"name": "a.counter"})
    for token, expected in [("token-one", "1"), ("token-one", "2"), ("token-two", "1")]:
        headers = {**modern_headers("tools/call", "a.counter"), "Authorization": f"Bearer {token}"}
        _, raw = await http(gw, "POST", "/mcp", modern, headers, auth=None)
        assert decoded(raw)["result"]["content"][0]["text"] == expected
    await sleep(0)


@pytest_twisted.ensureDeferred
async def test_rest_calls_cannot_squat_or_use_mcp_sessions(live: Any) -> None:
    principals = [
        {"name": "one", "role": "agent", "token_hash": hash_token("token-one")},
        {"name": "two", "role": "agent", "token_hash": hash_token("token-two")},
    ]
    gw = live({"a": fixture_service()}, server={"principals": principals})
    one = {"Authorization": "Bearer token-one"}
    two = {"Authorization": "Bearer token-two"}

    async def rest_call(session_id: str, headers: dict[str, str]) -> tuple[int, Any]:
        body = {"tool": "counter", "session_id": session_id}
        response, raw = await http(
            gw, "POST", "/services/a/call", body, {"Content-Type": "application/json", **headers}, auth=None
        )
        return response.code, decoded(raw)

    # "two" tries to take "one"'s modern session before "one" ever used /mcp.
    code, body = await rest_call("mcp-modern.one", two)
    assert (code, body["code"]) == (400, "invalid_session_id")
    assert len(gw.gateway.sessions) == 0
    modern = modern_request("tools/call", {"name": "a.counter"})
    headers = {**modern_headers("tools/call", "a.counter"), **one}
    response, raw = await http(gw, "POST", "/mcp", modern, headers, auth=None)
    assert response.code == 200, raw
    assert decoded(raw)["result"]["content"][0]["text"] == "1"
    # Not even its owner can use it, or a legacy MCP session, through REST.
    assert (await rest_call("mcp-modern.one", one))[0] == 400
    legacy = await initialize(gw)
    code, body = await rest_call(legacy, {"Authorization": BASIC})
    assert (code, body["code"]) == (400, "invalid_session_id")
    assert "MCP endpoint" in body["error"]
    # GET /sessions lists it for its owner (and admins); DELETE closes it like any session.
    _, raw = await http(gw, "GET", "/sessions", headers=two, auth=None)
    assert "mcp-modern.one" not in decoded(raw)
    _, raw = await http(gw, "GET", "/sessions", headers=one, auth=None)
    assert list(decoded(raw)) == ["mcp-modern.one"]
    response, _ = await http(gw, "DELETE", "/sessions/mcp-modern.one", headers=two, auth=None)
    assert response.code == 404
    response, raw = await http(gw, "DELETE", "/sessions/mcp-modern.one", headers=one, auth=None)
    assert response.code == 200, raw
    response, raw = await http(gw, "POST", "/mcp", modern, headers, auth=None)
    assert decoded(raw)["result"]["content"][0]["text"] == "1", "a fresh session, a fresh child"
    # Ordinary REST session ids still work.
    code, body = await rest_call("call-1", two)
    assert (code, body["result"]) == (200, "1")


def test_modern_session_ids_are_unique_per_principal() -> None:
    from mcpgateway.front.client import modern_session_id
    from mcpgateway.names import SESSION_ID
    from mcpgateway.policy.auth import Principal

    def of(name: str) -> str:
        return modern_session_id(Principal(name, "agent"))

    assert of("alice") == "mcp-modern.alice"
    long_a, long_b = "a" * 200 + "x", "a" * 200 + "y"
    odd = ["bob smith", "bob_smith", "ü", "a:b", long_a, long_b]
    ids = [of(name) for name in odd]
    assert len(set(ids)) == len(ids)
    assert all(SESSION_ID.fullmatch(session_id) and session_id.startswith("mcp-modern.") for session_id in ids)


def slow_and_broken_services() -> dict[str, dict[str, Any]]:
    return {
        "sdk": {"command": [PYTHON, SDK_SERVER]},
        "broken": fixture_service("--exit-at-start", "2"),
        "stuck": fixture_service("--no-handshake-reply", protocol="legacy", handshake_timeout=20, call_timeout=1),
    }


@pytest.mark.parametrize("method", ["prompts/list", "resources/list", "tools/list"])
@pytest_twisted.ensureDeferred
async def test_lists_leave_out_failing_and_stalled_services(live: Any, method: str) -> None:
    from twisted.internet import reactor

    gw = live(slow_and_broken_services())
    started = reactor.seconds()
    response, raw = await http(gw, "POST", "/mcp", modern_request(method), modern_headers(method))
    took = reactor.seconds() - started
    assert response.code == 200, raw
    result = decoded(raw)["result"]
    key = {"prompts/list": "prompts", "resources/list": "resources", "tools/list": "tools"}[method]
    names = [item.get("name") if key != "resources" else item["uri"] for item in result[key]]
    expected = {"prompts": "sdk.greet", "resources": "mcpgw://sdk/memo://notes", "tools": "sdk.remember"}[key]
    assert expected in names
    assert not any(str(name).startswith(("broken", "stuck", "mcpgw://broken", "mcpgw://stuck")) for name in names)
    # Asked at once, the stuck one given up after its call_timeout (1 s), not its handshake_timeout (20 s).
    assert took < 15, took


@pytest_twisted.ensureDeferred
async def test_a_single_service_list_that_times_out_is_an_error(live: Any) -> None:
    gw = live(slow_and_broken_services())
    listing, headers = modern_request("prompts/list"), modern_headers("prompts/list")
    _, raw = await http(gw, "POST", "/services/stuck/mcp", listing, headers)
    assert decoded(raw)["error"]["code"] == -32001, raw
    _, raw = await http(gw, "POST", "/services/broken/mcp", listing, headers)
    error = decoded(raw)["error"]
    assert error["code"] == -32603 and error["data"]["reason"] == "service_unavailable", raw


def json_texts() -> dict[str, bytes]:
    call = modern_request("tools/call", {"name": "a.echo", "arguments": {"text": "x", "n": "HERE"}})
    text = json.dumps(call)
    template = text.encode()
    bodies = {
        name: template.replace(b'"HERE"', value)
        for name, value in [
            ("nan", b"NaN"),
            ("infinity", b"Infinity"),
            ("minus_infinity", b"-Infinity"),
            ("overflow", b"1e400"),
            ("minus_overflow", b"-1e400"),
            ("long_integer", b"1" + b"0" * 5000),
            ("deep", b"[" * 100 + b"]" * 100),
        ]
    }
    for encoding in ("utf-16", "utf-16-le", "utf-32", "utf-32-be"):
        bodies[encoding] = text.replace('"HERE"', "1").encode(encoding)
    return bodies


@pytest.mark.parametrize("era", ["legacy", MODERN])
@pytest.mark.parametrize("kind", list(json_texts()))
@pytest_twisted.ensureDeferred
async def test_json_the_gateway_cannot_pass_on_is_a_parse_error(live: Any, era: str, kind: str) -> None:
    gw = live({"a": fixture_service()})
    headers = legacy_headers(await initialize(gw)) if era == "legacy" else modern_headers("tools/call", "a.echo")
    response, raw = await http(gw, "POST", "/mcp", json_texts()[kind], headers)
    assert response.code == 400, raw
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    body = decoded(raw)
    assert body["error"]["code"] == -32700
    assert body["error"]["message"].startswith("Parse error: ")
    assert gw.gateway.services["a"].spawns == 0, "nothing reached a child"
    # The same request in plain UTF-8 JSON is answered.
    good = modern_request("tools/call", {"name": "a.echo", "arguments": {"text": "x", "n": 1}})
    response, raw = await http(gw, "POST", "/mcp", good, headers)
    assert decoded(raw)["result"]["content"][0]["text"] == "x"


@pytest_twisted.ensureDeferred
async def test_malformed_requests_get_a_json_rpc_4xx(live: Any) -> None:
    gw = live({"a": fixture_service()})
    session = await initialize(gw)
    # HEAD is no MCP method (werkzeug routes it like GET).
    response, raw = await http(gw, "HEAD", "/mcp", headers=legacy_headers(session))
    assert response.code == 405
    assert response.headers.getRawHeaders(b"allow") == [b"GET, POST, DELETE"]
    # A cancellation naming an impossible id is a notification like any other.
    for request_id in ([1], {"a": 1}, None, True, 1.5):
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}
        response, raw = await http(gw, "POST", "/mcp", cancel, legacy_headers(session))
        assert response.code == 202, (request_id, raw)
    # Arguments that are not an object are refused before any child starts.
    for arguments in ("x", [1], 3):
        call = modern_request("tools/call", {"name": "a.echo", "arguments": arguments})
        response, raw = await http(gw, "POST", "/mcp", call, modern_headers("tools/call", "a.echo"))
        assert (response.code, decoded(raw)["error"]["code"]) == (400, -32602), raw
        legacy = {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": "a.echo", "arguments": arguments},
        }
        response, raw = await http(gw, "POST", "/mcp", legacy, legacy_headers(session))
        assert decoded(raw)["error"]["code"] == -32602, raw
        prompt = modern_request("prompts/get", {"name": "a.p", "arguments": arguments})
        response, raw = await http(gw, "POST", "/mcp", prompt, modern_headers("prompts/get", "a.p"))
        assert (response.code, decoded(raw)["error"]["code"]) == (400, -32602), raw
    # Names that cannot be any service's start nothing to find that out.
    for name in ("nodot", "nowhere.echo", ".echo", "a.", "x" * 65):
        for method in ("tools/call", "prompts/get"):
            request = modern_request(method, {"name": name})
            response, raw = await http(gw, "POST", "/mcp", request, modern_headers(method, name))
            assert (response.code, decoded(raw)["error"]["code"]) == (400, -32602), (name, raw)
    assert gw.gateway.services["a"].spawns == 0
    # The session still works.
    ping = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
    response, raw = await http(gw, "POST", "/mcp", ping, legacy_headers(session))
    assert decoded(raw) == {"jsonrpc": "2.0", "id": 9, "result": {}}


# -- the ChildProtocol hooks (no process) -----------------------------------------------------------


def hooked_peer() -> tuple[Any, Any, list[tuple[str, dict[str, Any]]]]:
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from mcpgateway.mcp.stdio import ChildProtocol

    notifications: list[tuple[str, dict[str, Any]]] = []
    protocol = ChildProtocol(
        "hooks[1]", Clock(), 1 << 20, lambda method, params: notifications.append((method, params))
    )
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, notifications


def sent(transport: Any) -> list[dict[str, Any]]:
    raw = transport.value()
    transport.clear()
    return [json.loads(line) for line in raw.splitlines()]


def receive(protocol: Any, *messages: dict[str, Any]) -> None:
    protocol.outReceived(b"".join(json.dumps(m).encode() + b"\n" for m in messages))


def test_protocol_without_hooks_behaves_as_before() -> None:
    protocol, transport, notifications = hooked_peer()
    receive(
        protocol,
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": 2, "method": "sampling/createMessage", "params": {}},
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "t", "progress": 1}},
    )
    answers = sent(transport)
    assert answers[0] == {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert answers[1]["id"] == 2 and answers[1]["error"]["code"] == -32601
    assert notifications == [("notifications/progress", {"progressToken": "t", "progress": 1})]


def test_protocol_request_handler_answers_first() -> None:
    from mcpgateway.mcp.jsonrpc import RPCError

    protocol, transport, _ = hooked_peer()
    pending: dict[str, Deferred[dict[str, Any]]] = {}

    def handler(method: str, params: dict[str, Any]) -> Deferred[dict[str, Any]] | None:
        if method == "ping":
            return None  # the built-in answer
        pending[method] = Deferred()
        return pending[method]

    protocol.request_handler = handler
    receive(
        protocol,
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": "s", "method": "sampling/createMessage", "params": {"maxTokens": 1}},
        {"jsonrpc": "2.0", "id": 3, "method": "roots/list"},
        {"jsonrpc": "2.0", "id": 4, "method": "elicitation/create"},
    )
    assert sent(transport) == [{"jsonrpc": "2.0", "id": 1, "result": {}}]
    pending["sampling/createMessage"].callback({"model": "m"})
    pending["roots/list"].errback(RPCError(-32042, "no roots", {"why": 1}))
    pending["elicitation/create"].errback(ValueError("boom"))
    answers = sent(transport)
    assert answers[0] == {"jsonrpc": "2.0", "id": "s", "result": {"model": "m"}}
    assert answers[1] == {
        "jsonrpc": "2.0",
        "id": 3,
        "error": {"code": -32042, "message": "no roots", "data": {"why": 1}},
    }
    assert answers[2]["id"] == 4 and answers[2]["error"]["code"] == -32603


def test_protocol_progress_routes_and_listeners() -> None:
    protocol, _, notifications = hooked_peer()
    routed: list[dict[str, Any]] = []
    heard: list[str] = []
    protocol.progress_routes["mcpgw-1"] = routed.append
    protocol.listeners.append(lambda method, params: heard.append(method))
    receive(
        protocol,
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "mcpgw-1", "progress": 1}},
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "other", "progress": 2}},
        {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"},
    )
    assert routed == [{"progressToken": "mcpgw-1", "progress": 1}]
    assert [method for method, _ in notifications] == ["notifications/progress", "notifications/tools/list_changed"]
    assert heard == ["notifications/progress", "notifications/tools/list_changed"]
