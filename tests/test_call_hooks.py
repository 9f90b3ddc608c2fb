"""
The governance seam of L{mcpgateway.calls.ToolCalls}: a policy is asked once
per call and an observer told once per call, whichever door the call came in
by, and a tool a policy hides is absent from both doors' listings.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from mcp import MCPError
from twisted.internet.defer import Deferred

from mcpgateway.calls import CallRecord, CallRequest
from mcpgateway.errors import GatewayError
from mcpgateway.policy.auth import Principal

from .conftest import fixture_service
from .test_mcp_front import MODES, connect, in_thread


class Refused(GatewayError):
    status = 403
    code = "forbidden_tool"


class HideFail:
    """
    Hides and refuses the fixture's C{fail} tool; counts what it is asked.
    """

    def __init__(self) -> None:
        self.asked: list[CallRequest] = []

    def admit(self, request: CallRequest) -> Deferred[None] | None:
        self.asked.append(request)
        if request.tool == "fail":
            raise Refused(f"{request.principal.name} may not call {request.service}/{request.tool}")
        return None

    def visible(self, principal: Principal, service: str, tool: str) -> bool:
        return tool != "fail"

    def visible_service(self, principal: Principal, service: str) -> bool:
        return True


class Records:
    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def record(self, record: CallRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_policies_and_observers_apply_once_per_call_on_both_doors(live: Any, mode: str) -> None:
    policy, observer = HideFail(), Records()
    gw = live({"fx": fixture_service()}, app_options={"policies": [policy], "observers": [observer]})

    _, listing = await gw.request("GET", "/services/fx/tools")
    names = {tool["name"] for tool in listing["tools"]}
    assert "echo" in names and "fail" not in names
    response, body = await gw.call("fx", "echo", "s1", {"text": "hi"})
    assert (response.code, body["result"]) == (200, "hi")
    response, body = await gw.call("fx", "fail", "s1")
    assert (response.code, body["code"]) == (403, "forbidden_tool")

    async def use() -> tuple[list[str], Any, Any]:
        async with connect(gw.url + "/mcp", mode) as client:
            tools = [tool.name for tool in (await client.list_tools()).tools]
            echoed = await client.call_tool("fx.echo", {"text": "there"})
            with pytest.raises(MCPError) as refused:
                await client.call_tool("fx.fail", {})
            return tools, echoed, refused.value.error

    tools, echoed, refusal = await in_thread(use())
    assert "fx.echo" in tools and "fx.fail" not in tools
    assert echoed.content[0].text == "there"
    assert refusal.data["reason"] == "forbidden_tool" and refusal.data["status"] == 403

    asked = [(r.front, r.tool) for r in policy.asked]
    assert asked == [("rest", "echo"), ("rest", "fail"), ("mcp", "echo"), ("mcp", "fail")]
    seen = [(r.request.front, r.request.tool, r.outcome, r.status) for r in observer.records]
    assert seen == [
        ("rest", "echo", "ok", 200),
        ("rest", "fail", "forbidden_tool", 403),
        ("mcp", "echo", "ok", 200),
        ("mcp", "fail", "forbidden_tool", 403),
    ]
    assert observer.records[0].request.address == "127.0.0.1"
    assert observer.records[2].request.arguments == {"text": "there"}
    assert observer.records[0].result["result"] == "hi" and observer.records[1].result is None
