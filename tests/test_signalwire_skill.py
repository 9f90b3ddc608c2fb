"""
The stock C{mcp_gateway} skill of C{signalwire-agents}, used unchanged,
against a live gateway with real children: the real todo example server and
the official-SDK server.

The skill is synchronous (it uses C{requests}), so every piece of skill code
runs in a worker thread (L{deferToThread}) while the reactor keeps serving.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

import pytest
import pytest_twisted
from signalwire_agents import AgentBase
from signalwire_agents.core.function_result import SwaigFunctionResult
from twisted.internet.threads import deferToThread

from .conftest import AUTH, PASSWORD, SDK_SERVER, USER, wait_until

TODO = {"command": [sys.executable, "-m", "mcpgateway.examples.todo_server"], "description": "todo list"}
SDK = {"command": [sys.executable, SDK_SERVER], "description": "official SDK server"}
SERVICES = {"todo": TODO, "sdk": SDK}
TODO_FUNCTIONS = {"mcp_todo_add_todo", "mcp_todo_list_todos", "mcp_todo_complete_todo", "mcp_todo_delete_todo"}
SDK_FUNCTIONS = {"mcp_sdk_remember", "mcp_sdk_recall", "mcp_sdk_shout"}
HANGUP = "_mcp_gateway_hangup"


@pytest.fixture(autouse=True)
def _allow_loopback_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    # The skill's SSRF guard refuses 127.0.0.1 unless told otherwise.
    monkeypatch.setenv("SWML_ALLOW_PRIVATE_URLS", "1")
    for name in ("MCP_GATEWAY_AUTH_TOKEN", "MCP_GATEWAY_AUTH_USER", "MCP_GATEWAY_AUTH_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


def _make_agent(url: str, **params: Any) -> AgentBase:
    """
    Build an agent with the skill (blocking: run it in a thread).
    """
    agent = AgentBase(name="t", route="/t")
    agent.add_skill("mcp_gateway", {"gateway_url": url, **params})
    return agent


async def make_agent(gw: Any, **params: Any) -> AgentBase:
    params.setdefault("services", [{"name": "todo"}, {"name": "sdk"}])
    if "auth_token" not in params:
        params.setdefault("auth_user", USER)
        params.setdefault("auth_password", PASSWORD)
    agent = await deferToThread(_make_agent, gw.url, **params)
    # The short-lived tool listers are closed once the lists are cached.
    await wait_until(lambda: not gw.children())
    return agent


def functions(agent: AgentBase) -> dict[str, Any]:
    """
    @return: The agent's registered SWAIG functions by name.
    """
    return {function.name: function for function in agent.define_tools()}


async def invoke(agent: AgentBase, name: str, args: dict[str, Any], call_id: str = "c1") -> str:
    """
    Call a SWAIG function as SignalWire would, in a thread.

    @return: The C{response} text of its L{SwaigFunctionResult}.
    """
    raw = {"call_id": call_id, "global_data": {}}
    result = await deferToThread(agent.on_function_call, name, args, raw)
    assert isinstance(result, SwaigFunctionResult), result
    response = result.to_dict()["response"]
    assert isinstance(response, str)
    return response


async def hangup(agent: AgentBase, call_id: str = "c1") -> str:
    return await invoke(agent, HANGUP, {}, call_id)


# -- discovery --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tools_become_swaig_functions_with_parameters_from_input_schema(live: Any) -> None:
    gw = live(SERVICES)
    agent = await make_agent(gw)
    registered = functions(agent)
    assert set(registered) == TODO_FUNCTIONS | SDK_FUNCTIONS | {HANGUP}

    add = registered["mcp_todo_add_todo"]
    assert add.description.startswith("[todo] Add a new, not yet done item")
    assert add.parameters == {"text": {"type": "string", "description": "What is to be done, e.g. 'buy milk'."}}
    complete = registered["mcp_todo_complete_todo"]
    assert complete.parameters["id"]["type"] == "integer"
    assert registered["mcp_todo_list_todos"].parameters == {}
    # The SDK derives its schemas from the Python signatures.
    assert set(registered["mcp_sdk_remember"].parameters) == {"key", "value"}
    assert registered["mcp_sdk_shout"].parameters["text"]["type"] == "string"
    assert registered["mcp_sdk_shout"].description == "[sdk] Return the given text in upper case."
    assert registered[HANGUP].extra_swaig_fields.get("is_hangup_hook") is True

    # Listing tools starts no session and leaves no child behind.
    await wait_until(lambda: not gw.children())
    assert len(gw.gateway.sessions) == 0


@pytest_twisted.ensureDeferred
async def test_no_services_param_registers_every_service_from_get_services(live: Any) -> None:
    gw = live(SERVICES)
    agent = await make_agent(gw, services=[])
    assert set(functions(agent)) == TODO_FUNCTIONS | SDK_FUNCTIONS | {HANGUP}
    assert await invoke(agent, "mcp_sdk_shout", {"text": "quiet"}) == "QUIET"
    await hangup(agent)
    await wait_until(lambda: not gw.children())


@pytest_twisted.ensureDeferred
async def test_tool_filter_limits_the_registered_functions(live: Any) -> None:
    gw = live(SERVICES)
    agent = await make_agent(gw, services=[{"name": "todo", "tools": ["add_todo", "list_todos"]}])
    assert set(functions(agent)) == {"mcp_todo_add_todo", "mcp_todo_list_todos", HANGUP}


# -- calls and sessions -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_calls_in_one_call_id_keep_state(live: Any) -> None:
    gw = live(SERVICES)
    agent = await make_agent(gw)
    assert await invoke(agent, "mcp_todo_add_todo", {"text": "buy milk"}) == "Added todo #1: buy milk"
    assert await invoke(agent, "mcp_todo_add_todo", {"text": "walk the dog"}) == "Added todo #2: walk the dog"
    assert await invoke(agent, "mcp_todo_complete_todo", {"id": 1}) == "Completed todo #1: buy milk"
    listing = await invoke(agent, "mcp_todo_list_todos", {})
    assert listing == "#1 [x] buy milk\n#2 [ ] walk the dog"
    # A tool error comes back as the result text, not as a gateway failure.
    missing = await invoke(agent, "mcp_todo_delete_todo", {"id": 9})
    assert missing.startswith("No todo #9")
    assert len(gw.children()) == 1, "one child for the whole call"
    await hangup(agent)
    await wait_until(lambda: not gw.children())


@pytest_twisted.ensureDeferred
async def test_one_call_id_uses_two_services_in_one_session(live: Any) -> None:
    gw = live(SERVICES)
    agent = await make_agent(gw)
    assert await invoke(agent, "mcp_todo_add_todo", {"text": "buy milk"}) == "Added todo #1: buy milk"
    assert await invoke(agent, "mcp_sdk_remember", {"key": "colour", "value": "teal"}) == "remembered colour"
    assert await invoke(agent, "mcp_sdk_recall", {"key": "colour"}) == "teal"
    assert await invoke(agent, "mcp_todo_list_todos", {}) == "#1 [ ] buy milk"

    response, sessions = await gw.request("GET", "/sessions")
    assert response.code == 200
    assert set(sessions) == {"c1"}
    session = sessions["c1"]
    assert session["services"] == ["sdk", "todo"]
    assert session["timeout"] == 300, "the skill's session_timeout"
    assert session["metadata"]["agent_id"] == "t"
    assert session["metadata"]["call_id"] == "c1"
    assert session["owner"] == USER
    assert len(gw.children()) == 2

    await hangup(agent)
    await wait_until(lambda: not gw.children())
    assert (await gw.request("GET", "/sessions"))[1] == {}


@pytest_twisted.ensureDeferred
async def test_recall_of_an_unknown_key_is_reported_as_text(live: Any) -> None:
    gw = live(SERVICES)
    agent = await make_agent(gw)
    text = await invoke(agent, "mcp_sdk_recall", {"key": "never"})
    assert "nothing remembered under 'never'" in text
    await hangup(agent)
    await wait_until(lambda: not gw.children())


@pytest_twisted.ensureDeferred
async def test_different_call_ids_do_not_share_state(live: Any) -> None:
    gw = live(SERVICES)
    agent = await make_agent(gw)
    await invoke(agent, "mcp_todo_add_todo", {"text": "first caller's todo"}, call_id="call-a")
    assert await invoke(agent, "mcp_todo_list_todos", {}, call_id="call-b") == "No todos."
    assert await invoke(agent, "mcp_todo_list_todos", {}, call_id="call-a") == "#1 [ ] first caller's todo"
    _, sessions = await gw.request("GET", "/sessions")
    assert set(sessions) == {"call-a", "call-b"}
    assert len(gw.children()) == 2
    await hangup(agent, "call-a")
    await hangup(agent, "call-b")
    await wait_until(lambda: not gw.children())


@pytest_twisted.ensureDeferred
async def test_global_data_mcp_call_id_overrides_call_id(live: Any) -> None:
    gw = live(SERVICES)
    agent = await make_agent(gw)
    raw = {"call_id": "ignored", "global_data": {"mcp_call_id": "shared"}}
    result = await deferToThread(agent.on_function_call, "mcp_todo_add_todo", {"text": "x"}, raw)
    assert result.to_dict()["response"] == "Added todo #1: x"
    _, sessions = await gw.request("GET", "/sessions")
    assert set(sessions) == {"shared"}
    await hangup(agent, "shared")
    await wait_until(lambda: not gw.children())


@pytest_twisted.ensureDeferred
async def test_hangup_hook_deletes_the_session_and_a_second_hangup_is_still_done(live: Any) -> None:
    gw = live(SERVICES)
    agent = await make_agent(gw)
    await invoke(agent, "mcp_todo_add_todo", {"text": "buy milk"})
    await invoke(agent, "mcp_sdk_remember", {"key": "k", "value": "v"})
    assert len(gw.children()) == 2
    assert await hangup(agent) == "Session cleanup complete"
    assert gw.gateway.sessions.get("c1") is None
    await wait_until(lambda: not gw.children())
    # The session is gone (the gateway answers 404), which the skill counts as done.
    response, body = await gw.request("DELETE", "/sessions/c1")
    assert (response.code, body["code"]) == (404, "session_not_found")
    assert await hangup(agent) == "Session cleanup complete"
    # The same call id afterwards starts afresh.
    assert await invoke(agent, "mcp_todo_list_todos", {}) == "No todos."
    assert "nothing remembered" in await invoke(agent, "mcp_sdk_recall", {"key": "k"})
    await hangup(agent)
    await wait_until(lambda: not gw.children())


# -- authentication ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_bearer_token_authentication(live: Any) -> None:
    gw = live(SERVICES, server={"auth_token": "tok-0123456789"})
    agent = await make_agent(gw, auth_token="tok-0123456789")
    assert set(functions(agent)) == TODO_FUNCTIONS | SDK_FUNCTIONS | {HANGUP}
    assert await invoke(agent, "mcp_todo_add_todo", {"text": "by token"}) == "Added todo #1: by token"
    assert await invoke(agent, "mcp_todo_list_todos", {}) == "#1 [ ] by token"
    _, sessions = await gw.request("GET", "/sessions")
    assert set(sessions) == {"c1"}
    assert await hangup(agent) == "Session cleanup complete"
    assert gw.gateway.sessions.get("c1") is None
    await wait_until(lambda: not gw.children())


@pytest_twisted.ensureDeferred
async def test_wrong_password_registers_no_tools_and_calls_nothing(live: Any) -> None:
    gw = live(SERVICES)
    # setup() checks only /health (no credentials), so the skill loads...
    agent = await make_agent(gw, auth_password="wrong")
    # ...but every tool list was refused: only the hangup hook is there.
    assert set(functions(agent)) == {HANGUP}
    assert await invoke(agent, HANGUP, {}) == "Session cleanup complete"
    assert not gw.children()
    assert gw.gateway.services["todo"].spawns == 0
    assert gw.gateway.services["sdk"].spawns == 0
    assert (await gw.request("GET", "/sessions", auth=AUTH))[1] == {}


@pytest_twisted.ensureDeferred
async def test_wrong_token_registers_no_tools(live: Any) -> None:
    gw = live(SERVICES, server={"auth_token": "right-token"})
    agent = await make_agent(gw, auth_token="wrong-token")
    assert set(functions(agent)) == {HANGUP}
    assert gw.gateway.services["todo"].spawns == 0


@pytest_twisted.ensureDeferred
async def test_unreachable_gateway_fails_the_skill_setup() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(ValueError, match="mcp_gateway"):
        await deferToThread(_make_agent, url, auth_user=USER, auth_password=PASSWORD, services=[{"name": "todo"}])
