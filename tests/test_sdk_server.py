"""
A server built on the official MCP Python SDK (C{tests/servers/sdk_server.py})
behind the gateway, in both protocol eras, and the SDK's own client talking
to the same server over stdio as a control.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

import pytest
import pytest_twisted
from mcp import Client, StdioServerParameters
from twisted.internet.threads import deferToThread

from .conftest import SDK_SERVER, tagged_processes, wait_until

ERAS = [
    pytest.param("auto", "modern", id="auto-is-modern"),
    pytest.param("modern", "modern", id="modern"),
    pytest.param("legacy", "legacy", id="legacy"),
]
TOOL_NAMES = {"remember", "recall", "shout"}


def sdk_service(protocol: str) -> dict[str, Any]:
    return {"command": [sys.executable, SDK_SERVER], "description": "official SDK server", "protocol": protocol}


def _start(live: Any, protocol: str) -> Any:
    return live({"sdk": sdk_service(protocol)})


async def _close(gw: Any, *sessions: str) -> None:
    for session in sessions:
        response, _ = await gw.request("DELETE", f"/sessions/{session}")
        assert response.code == 200
    await wait_until(lambda: not gw.children())


@pytest.mark.parametrize(("protocol", "era"), ERAS)
@pytest_twisted.ensureDeferred
async def test_tools_are_listed_with_input_schemas(live: Any, protocol: str, era: str) -> None:
    gw = _start(live, protocol)
    response, body = await gw.request("GET", "/services/sdk/tools")
    assert response.code == 200, body
    assert body["service"] == "sdk"
    tools = {tool["name"]: tool for tool in body["tools"]}
    assert set(tools) == TOOL_NAMES
    remember = tools["remember"]["inputSchema"]
    assert remember["type"] == "object"
    assert set(remember["properties"]) == {"key", "value"}
    assert sorted(remember["required"]) == ["key", "value"]
    assert tools["recall"]["inputSchema"]["required"] == ["key"]
    assert tools["shout"]["inputSchema"]["properties"]["text"]["type"] == "string"
    assert tools["shout"]["description"] == "Return the given text in upper case."
    assert gw.gateway.services["sdk"].era.name == era
    _, services = await gw.request("GET", "/services")
    assert services["sdk"]["protocol"] == era
    await wait_until(lambda: not gw.children())


@pytest.mark.parametrize(("protocol", "era"), ERAS)
@pytest_twisted.ensureDeferred
async def test_state_is_kept_within_a_session(live: Any, protocol: str, era: str) -> None:
    gw = _start(live, protocol)
    response, body = await gw.call("sdk", "remember", "s1", {"key": "colour", "value": "teal"})
    assert response.code == 200, body
    assert (body["result"], body["is_error"]) == ("remembered colour", False)
    response, body = await gw.call("sdk", "recall", "s1", {"key": "colour"})
    assert response.code == 200, body
    assert body["result"] == "teal"
    assert body["is_error"] is False
    assert body["content"] == [{"type": "text", "text": "teal"}]
    assert body["structured_content"] == {"result": "teal"}
    assert body["session_restarted"] is False
    assert gw.gateway.services["sdk"].era.name == era
    assert len(gw.children()) == 1
    await _close(gw, "s1")


@pytest.mark.parametrize(("protocol", "era"), ERAS)
@pytest_twisted.ensureDeferred
async def test_shout_returns_a_string(live: Any, protocol: str, era: str) -> None:
    gw = _start(live, protocol)
    response, body = await gw.call("sdk", "shout", "s1", {"text": "héllo wörld"})
    assert response.code == 200, body
    assert body["result"] == "HÉLLO WÖRLD"
    assert isinstance(body["result"], str)
    assert body["tool"] == "shout"
    assert gw.gateway.services["sdk"].era.name == era
    await _close(gw, "s1")


@pytest.mark.parametrize(("protocol", "era"), ERAS)
@pytest_twisted.ensureDeferred
async def test_recall_of_an_unknown_key_is_an_error_result(live: Any, protocol: str, era: str) -> None:
    gw = _start(live, protocol)
    response, body = await gw.call("sdk", "recall", "s1", {"key": "never"})
    assert response.code == 200, body
    assert body["is_error"] is True
    assert "nothing remembered under 'never'" in body["result"]
    # An SDK validation failure (missing argument) is an error result too, not a JSON-RPC error.
    response, body = await gw.call("sdk", "recall", "s1", {})
    assert response.code == 200, body
    assert body["is_error"] is True
    assert "key" in body["result"]
    # The child survived both.
    response, body = await gw.call("sdk", "shout", "s1", {"text": "ok"})
    assert (body["result"], body["session_restarted"]) == ("OK", False)
    await _close(gw, "s1")


@pytest.mark.parametrize(("protocol", "era"), ERAS)
@pytest_twisted.ensureDeferred
async def test_sessions_are_separate(live: Any, protocol: str, era: str) -> None:
    gw = _start(live, protocol)
    await gw.call("sdk", "remember", "alice", {"key": "secret", "value": "a-value"})
    await gw.call("sdk", "remember", "bob", {"key": "secret", "value": "b-value"})
    assert (await gw.call("sdk", "recall", "alice", {"key": "secret"}))[1]["result"] == "a-value"
    assert (await gw.call("sdk", "recall", "bob", {"key": "secret"}))[1]["result"] == "b-value"
    response, body = await gw.call("sdk", "recall", "carol", {"key": "secret"})
    assert (response.code, body["is_error"]) == (200, True)
    assert len(gw.children()) == 3
    _, sessions = await gw.request("GET", "/sessions")
    assert set(sessions) == {"alice", "bob", "carol"}
    assert all(view["services"] == ["sdk"] for view in sessions.values())
    await _close(gw, "alice", "bob", "carol")


# -- the SDK's own client as a control --------------------------------------------------------

CONTROL_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("remember", {"key": "k", "value": "v"}),
    ("recall", {"key": "k"}),
    ("shout", {"text": "mixed Case ü"}),
    ("recall", {"key": "missing"}),
]


def _sdk_client_run(mode: str, tag: str) -> dict[str, Any]:
    """
    Talk to sdk_server.py with the official client over stdio (in a worker thread).

    @return: The protocol version, the tools, and each call's result, as JSON.
    """

    async def run() -> dict[str, Any]:
        params = StdioServerParameters(command=sys.executable, args=[SDK_SERVER], env={"MCPGATEWAY_TEST_TAG": tag})
        async with Client(params, mode=mode) as client:
            tools = await client.list_tools()
            results = []
            for name, arguments in CONTROL_CALLS:
                result = await client.call_tool(name, arguments)
                results.append(result.model_dump(by_alias=True, exclude_none=True, mode="json"))
            return {
                "version": client.protocol_version,
                "tools": [tool.model_dump(by_alias=True, exclude_none=True, mode="json") for tool in tools.tools],
                "results": results,
            }

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("protocol", "mode", "era"),
    [
        pytest.param("auto", "auto", "modern", id="modern"),
        pytest.param("legacy", "legacy", "legacy", id="legacy"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_gateway_returns_what_the_sdk_client_gets(live: Any, protocol: str, mode: str, era: str) -> None:
    tag = uuid.uuid4().hex
    control = await deferToThread(_sdk_client_run, mode, tag)
    assert not tagged_processes(tag), "the SDK client's server is gone"
    assert control["version"] == ("2026-07-28" if era == "modern" else "2025-11-25")

    gw = _start(live, protocol)
    _, listing = await gw.request("GET", "/services/sdk/tools")
    gateway_tools = {tool["name"]: tool for tool in listing["tools"]}
    for tool in control["tools"]:
        mine = gateway_tools[tool["name"]]
        for key in ("description", "inputSchema", "outputSchema"):
            assert mine.get(key) == tool.get(key), (tool["name"], key)
    assert set(gateway_tools) == {tool["name"] for tool in control["tools"]}

    for (name, arguments), expected in zip(CONTROL_CALLS, control["results"], strict=True):
        response, body = await gw.call("sdk", name, "control", arguments)
        assert response.code == 200, body
        assert body["content"] == expected["content"], name
        assert body["is_error"] is expected["isError"], name
        assert body.get("structured_content") == expected.get("structuredContent"), name
        assert body["result"] == "\n".join(block["text"] for block in expected["content"])
    assert control["results"][3]["isError"] is True
    assert gw.gateway.services["sdk"].era.name == era
    await _close(gw, "control")
