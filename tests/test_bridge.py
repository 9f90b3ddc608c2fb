"""
The stdio bridge end to end: the official MCP SDK client launches
C{python -m mcpgateway.bridge URL ...} as a stdio server, and the bridge
relays to a live gateway's C{/mcp}.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
import pytest_twisted
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from .conftest import PASSWORD, USER, fixture_service, wait_until
from .test_mcp_front import MODERN, endpoint_of, in_thread

ROOT = str(Path(__file__).parent.parent)
MODES = ["legacy", MODERN, "auto"]


@asynccontextmanager
async def bridged(
    url: str, mode: str, *credentials: str, command: list[str] | None = None, **options: Any
) -> AsyncIterator[Client]:
    """
    An SDK client whose stdio server is the bridge to C{url}.
    """
    args = [*(command or ["-m", "mcpgateway.bridge"]), url, *(credentials or ("--user", USER, "--password", PASSWORD))]
    params = StdioServerParameters(command=sys.executable, args=args, cwd=ROOT)
    async with Client(params, mode=mode, read_timeout_seconds=30, **options) as client:
        yield client


@pytest.fixture
def stderr_lines() -> Any:
    from twisted.logger import globalLogPublisher

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if str(event.get("log_namespace", "")).startswith("mcpgateway.child.") and "line" in event:
            lines.append(str(event["line"]))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_sdk_client_through_the_bridge(live: Any, mode: str) -> None:
    gw = live({"a": fixture_service(), "b": fixture_service("--modern")})

    async def use() -> dict[str, Any]:
        updates: list[float] = []

        async def progress(value: float, total: float | None, message: str | None) -> None:
            updates.append(value)

        async with bridged(gw.url + "/mcp", mode) as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            added = await client.call_tool("a.add", {"a": 20, "b": 22})
            counts = [(await client.call_tool("b.counter", {})).content[0].text for _ in range(2)]  # type: ignore[union-attr]
            slow = await client.call_tool("a.slow_progress", {"steps": 3}, progress_callback=progress)
            with pytest.raises(MCPError) as rpc:
                await client.call_tool("a.rpc_error", {})
            return {
                "version": client.protocol_version,
                "names": names,
                "added": added.structured_content,
                "counts": counts,
                "slow": slow.content[0].text,  # type: ignore[union-attr]
                "updates": updates,
                "rpc": (rpc.value.error.code, rpc.value.error.data),
            }

    out = await in_thread(use())
    assert out["version"] == ("2025-11-25" if mode == "legacy" else MODERN)
    assert {"a.echo", "b.echo", "a.slow_progress"} <= set(out["names"])
    assert out["added"] == {"sum": 42}
    assert out["counts"] in (["1", "2"], ["3", "4"])
    assert out["slow"] == "done 3"
    assert out["updates"] == [1, 2, 3]
    assert out["rpc"] == (-32042, {"why": "testing"})
    if mode == "legacy":
        # The end of stdin deleted the session.
        await wait_until(lambda: len(gw.gateway.sessions) == 0)


@pytest_twisted.ensureDeferred
async def test_bridge_relays_the_get_stream_and_child_requests(live: Any) -> None:
    gw = live({"a": fixture_service()})

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="hi"), model="m")

    async def use() -> tuple[str, list[str]]:
        changed = asyncio.Event()
        seen: list[str] = []

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                seen.append(message.method)
                changed.set()

        async with bridged(gw.url + "/mcp", "legacy", sampling_callback=sampling, message_handler=on_message) as client:
            asked = (await client.call_tool("a.ask", {})).content[0].text  # type: ignore[union-attr]
            for _ in range(250):
                if any(c.stream is not None for c in endpoint_of(gw).front.clients.values()):
                    break
                await asyncio.sleep(0.02)
            await client.call_tool("a.notify", {})
            await asyncio.wait_for(changed.wait(), 10)
            return asked, seen

    asked, seen = await in_thread(use())
    assert asked == "sampling ok; ping ok"
    assert seen == ["notifications/tools/list_changed"]


@pytest.mark.parametrize("mode", ["legacy", MODERN])
@pytest_twisted.ensureDeferred
async def test_bridge_cancels_in_the_child(live: Any, mode: str, stderr_lines: list[str]) -> None:
    gw = live({"a": fixture_service()})

    async def use() -> str:
        async with bridged(gw.url + "/mcp", mode) as client:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.call_tool("a.sleep", {"seconds": 30}), 0.5)
            for _ in range(200):
                if any(line.startswith("cancelled") for line in stderr_lines):
                    break
                await asyncio.sleep(0.05)
            return (await client.call_tool("a.echo", {"text": "after"})).content[0].text  # type: ignore[union-attr]

    assert await in_thread(use()) == "after"
    assert any(line.startswith("cancelled") for line in stderr_lines)


@pytest_twisted.ensureDeferred
async def test_bridge_token_and_cli_form(live: Any) -> None:
    gw = live({"a": fixture_service()}, server={"auth_token": "s3cret-token"})

    async def use(*credentials: str, command: list[str] | None = None) -> str:
        async with bridged(gw.url + "/services/a/mcp", "legacy", *credentials, command=command) as client:
            return (await client.call_tool("echo", {"text": "tok"})).content[0].text  # type: ignore[union-attr]

    assert await in_thread(use("--token", "s3cret-token")) == "tok"
    cli = ["-c", "from mcpgateway.cli import main; main()", "bridge"]
    assert await in_thread(use("--token", "s3cret-token", command=cli)) == "tok"


@pytest_twisted.ensureDeferred
async def test_bridge_reports_refused_credentials(live: Any) -> None:
    gw = live({"a": fixture_service()})

    async def use() -> Any:
        try:
            async with bridged(gw.url + "/mcp", "legacy", "--user", USER, "--password", "wrong"):
                pass
        except BaseException as error:  # anyio wraps it in exception groups
            return error
        raise AssertionError("the client connected with a wrong password")

    def find(error: BaseException) -> MCPError | None:
        if isinstance(error, MCPError):
            return error
        for inner in getattr(error, "exceptions", ()):
            found = find(inner)
            if found is not None:
                return found
        return None

    refused = find(await in_thread(use()))
    assert refused is not None
    assert "HTTP 401" in refused.error.message
