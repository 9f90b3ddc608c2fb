"""
Popular MCP servers behind the gateway, as their READMEs start them, under
the default sandbox: the reference Node servers from npm (C{npx -y}),
C{mcp-server-time} from PyPI (C{uvx}) and a FastMCP server of the tests
(C{uv run --script}, its SDK from PyPI), each driven through the REST API
and through C{/mcp} with the official SDK client in both protocol eras.

L{SERVICES} is the README's "Running popular servers" block, word for word
(L{test_readme_shows_the_blocks_tested} keeps it so).  Every gateway of this
module shares one C{session.sandbox_dir}, so each package downloads once per
run into C{.cache/<service>}; each test still has its own gateway, stopped
and checked for leaked children by the C{live} fixture.  Without C{npx},
C{uvx} or C{uv} a test skips, saying which (C{.ci/run} makes that a failure).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred, gatherResults

from mcpgateway.policy.auth import hash_token

from .conftest import PASSWORD, SERVERS, require_binary, wait_until
from .test_mcp_front import LEGACY, MODERN, MODES, connect, in_thread

#: Third-party programs end to end: run once, in tox's e2e env (not per Python).
pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parent.parent

#: The README's service blocks.  C{${FILES_DIR}} and C{${FASTMCP_SERVER}}
#: are ordinary configuration variables, set by the L{start} fixture.
SERVICES: dict[str, dict[str, Any]] = {
    "everything": {"command": ["npx", "-y", "@modelcontextprotocol/server-everything"]},
    "memory": {
        "command": ["npx", "-y", "@modelcontextprotocol/server-memory"],
        "env": {"MEMORY_FILE_PATH": "${MCPGATEWAY_CHILD_DIR}/memory.jsonl"},
    },
    "thinking": {"command": ["npx", "-y", "@modelcontextprotocol/server-sequential-thinking"]},
    "filesystem": {"command": ["npx", "-y", "@modelcontextprotocol/server-filesystem", "${FILES_DIR|/srv/files}"]},
    "time": {"command": ["uvx", "mcp-server-time"]},
    "fastmcp": {"command": ["uv", "run", "--script", "${FASTMCP_SERVER|/srv/mcp/fastmcp_server.py}"]},
}

FASTMCP_SERVER = str(SERVERS / "fastmcp_server.py")
HELLO = "hello from the tests\n"
SECRET = "not for the filesystem server\n"
PRINCIPALS = [
    {"name": "one", "role": "agent", "token_hash": hash_token("token-one")},
    {"name": "two", "role": "agent", "token_hash": hash_token("token-two")},
]


# -- fixtures and helpers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    The C{session.sandbox_dir} of every gateway in this module: the
    services' download caches (C{.cache/<service>}) outlive each test.
    """
    return tmp_path_factory.mktemp("real-servers-sandbox")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    The filesystem server's allowed directory, with C{hello.txt}.
    """
    directory = tmp_path_factory.mktemp("real-servers-files")
    (directory / "hello.txt").write_text(HELLO)
    return directory


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    A directory next to the allowed one, with C{secret.txt}.
    """
    directory = tmp_path_factory.mktemp("real-servers-outside")
    (directory / "secret.txt").write_text(SECRET)
    return directory


@pytest.fixture
def start(live: Any, monkeypatch: pytest.MonkeyPatch, sandbox_dir: Path, files: Path) -> Callable[..., Any]:
    """
    Start a gateway serving the named L{SERVICES} (skipping the test when a
    launcher is missing), with the module's shared sandbox directory.
    """
    monkeypatch.setenv("FILES_DIR", str(files))
    monkeypatch.setenv("FASTMCP_SERVER", FASTMCP_SERVER)

    def run(*names: str, **sections: Any) -> Any:
        for name in names:
            require_binary(SERVICES[name]["command"][0])
        return live({name: SERVICES[name] for name in names}, session={"sandbox_dir": str(sandbox_dir)}, **sections)

    return run


#: Calls one tool and returns its result's text; it fails the test on an error result.
Caller = Callable[[str, dict[str, Any]], Awaitable[str]]


def text_of(result: Any) -> str:
    """
    @param result: An SDK C{CallToolResult} that must not be an error.
    @return: Its text blocks, joined as the REST API joins them.
    """
    assert result.is_error is False, result
    return "\n".join(block.text for block in result.content if block.type == "text")


def rest_caller(gw: Any, service: str, session: str) -> Caller:
    """
    @return: A L{Caller} of C{service}'s tools in the REST session C{session}.
    """

    async def call(tool: str, arguments: dict[str, Any]) -> str:
        response, body = await gw.call(service, tool, session, arguments)
        assert response.code == 200, body
        assert body["is_error"] is False, body
        return str(body["result"])

    return call


def sdk_caller(client: Any, service: str) -> Caller:
    """
    @return: A L{Caller} of C{service}'s tools through an SDK client of the aggregate C{/mcp}.
    """

    async def call(tool: str, arguments: dict[str, Any]) -> str:
        return text_of(await client.call_tool(f"{service}.{tool}", arguments))

    return call


# -- the README ----------------------------------------------------------------------------------------


def test_readme_shows_the_blocks_tested() -> None:
    text = (ROOT / "README.rst").read_text(encoding="utf-8")
    section = text.split("\nRunning popular servers\n", 1)[1]
    lines = section.splitlines()
    start = next(index for index, line in enumerate(lines) if line.endswith("::")) + 1
    block = []
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break
        block.append(line)
    assert json.loads("\n".join(block)) == {"services": SERVICES}


# -- each server, both doors ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """
    What one server must list, and one call with a known answer.

    @ivar tools: Names its C{tools/list} includes.
    @ivar tool: The tool to call.
    @ivar arguments: Its arguments.
    @ivar check: Whether the result's text is right.
    """

    tools: frozenset[str]
    tool: str
    arguments: dict[str, Any]
    check: Callable[[str], bool]


def tokyo_at_nine(conversion: dict[str, Any]) -> bool:
    """
    @param conversion: C{convert_time}'s answer for 12:00 UTC to Asia/Tokyo (no daylight saving time).
    @return: Whether it says 21:00 there, nine hours ahead.
    """
    return bool(
        conversion["target"]["datetime"].endswith("T21:00:00+09:00") and conversion["time_difference"] == "+9.0h"
    )


CASES = {
    "everything": Case(
        frozenset({"echo", "get-sum", "get-env", "trigger-long-running-operation", "get-structured-content"}),
        "get-sum",
        {"a": 2, "b": 3},
        lambda text: text == "The sum of 2 and 3 is 5.",
    ),
    "memory": Case(
        frozenset({"create_entities", "create_relations", "read_graph", "search_nodes"}),
        "read_graph",
        {},
        lambda text: json.loads(text) == {"entities": [], "relations": []},
    ),
    "thinking": Case(
        frozenset({"sequentialthinking"}),
        "sequentialthinking",
        {"thought": "first, list the tools", "thoughtNumber": 1, "totalThoughts": 2, "nextThoughtNeeded": True},
        lambda text: json.loads(text)["thoughtHistoryLength"] == 1,
    ),
    "filesystem": Case(
        frozenset({"read_text_file", "write_file", "list_directory", "list_allowed_directories"}),
        "read_text_file",
        {"path": "hello.txt"},  # relative to the allowed directory
        lambda text: text == HELLO,
    ),
    "time": Case(
        frozenset({"get_current_time", "convert_time"}),
        "convert_time",
        {"source_timezone": "Etc/UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"},
        lambda text: tokyo_at_nine(json.loads(text)),
    ),
    "fastmcp": Case(frozenset({"count", "long_task", "chatter"}), "count", {}, lambda text: text == "1"),
}


@pytest.mark.parametrize("service", list(CASES))
@pytest_twisted.ensureDeferred
async def test_listed_and_called_through_both_doors(start: Any, service: str) -> None:
    case = CASES[service]
    gw = start(service)
    response, body = await gw.request("GET", f"/services/{service}/tools")
    assert response.code == 200, body
    names = {tool["name"] for tool in body["tools"]}
    assert case.tools <= names, names
    result = await rest_caller(gw, service, "rest")(case.tool, case.arguments)
    assert case.check(result), result

    async def use(mode: str) -> tuple[str, set[str], str]:
        async with connect(gw.url + "/mcp", mode) as client:
            listed = {tool.name for tool in (await client.list_tools()).tools}
            return client.protocol_version, listed, await sdk_caller(client, service)(case.tool, case.arguments)

    for mode in MODES:
        version, listed, result = await in_thread(use(mode))
        assert version == (LEGACY if mode == "legacy" else MODERN)
        assert listed == {f"{service}.{name}" for name in names}
        assert case.check(result), (mode, result)


@pytest_twisted.ensureDeferred
async def test_all_six_behind_one_endpoint(start: Any) -> None:
    gw = start(*SERVICES)
    answers = await gatherResults([ensureDeferred(gw.request("GET", f"/services/{s}/tools")) for s in SERVICES])
    rest = {
        service: {tool["name"] for tool in body["tools"]} for service, (_, body) in zip(SERVICES, answers, strict=True)
    }

    async def use() -> tuple[set[str], dict[str, set[str]]]:
        async with connect(gw.url + "/mcp", MODERN) as client:
            aggregate = {tool.name for tool in (await client.list_tools()).tools}
        scoped = {}
        for service in SERVICES:
            async with connect(f"{gw.url}/services/{service}/mcp", "legacy") as client:
                scoped[service] = {tool.name for tool in (await client.list_tools()).tools}
        return aggregate, scoped

    aggregate, scoped = await in_thread(use())
    assert aggregate == {f"{service}.{name}" for service, names in rest.items() for name in names}
    assert scoped == rest
    _, listed = await gw.request("GET", "/services")
    # The Node servers speak only the legacy handshake, the Python SDK's both:
    # the gateway's probe found the era of each.
    assert {service: view["protocol"] for service, view in listed.items()} == {
        "everything": "legacy",
        "memory": "legacy",
        "thinking": "legacy",
        "filesystem": "legacy",
        "time": "modern",
        "fastmcp": "modern",
    }


# -- state per session ---------------------------------------------------------------------------------


async def remember_one_more(call: Caller) -> int:
    """
    Add an entity to the session's knowledge graph.

    @return: How many entities the graph holds now.
    """
    entity = {"name": f"entity-{uuid.uuid4().hex}", "entityType": "test", "observations": ["made by a test"]}
    await call("create_entities", {"entities": [entity]})
    return len(json.loads(await call("read_graph", {}))["entities"])


async def think_one_more(call: Caller) -> int:
    """
    Add a thought to the session's sequence.

    @return: The length of its thought history now.
    """
    thought = {"thought": "and then?", "thoughtNumber": 1, "totalThoughts": 3, "nextThoughtNeeded": True}
    return int(json.loads(await call("sequentialthinking", thought))["thoughtHistoryLength"])


async def count_one_more(call: Caller) -> int:
    """
    @return: How many times the session's FastMCP server was called.
    """
    return int(await call("count", {}))


#: Per stateful service: one step that changes its state and tells how many steps the state holds.
STEPS: dict[str, Callable[[Caller], Awaitable[int]]] = {
    "memory": remember_one_more,
    "thinking": think_one_more,
    "fastmcp": count_one_more,
}


@pytest.mark.parametrize("service", list(STEPS))
@pytest_twisted.ensureDeferred
async def test_state_is_kept_per_session_and_isolated(start: Any, service: str) -> None:
    gw = start(service, server={"principals": PRINCIPALS})
    step = STEPS[service]
    a, b = rest_caller(gw, service, "a"), rest_caller(gw, service, "b")
    assert [await step(a), await step(a), await step(b), await step(a), await step(b)] == [1, 2, 1, 3, 2]

    async def two_legacy_sessions() -> list[int]:
        async with connect(gw.url + "/mcp", "legacy") as x, connect(gw.url + "/mcp", "legacy") as y:
            first, second = sdk_caller(x, service), sdk_caller(y, service)
            return [await step(first), await step(second), await step(first), await step(first), await step(second)]

    assert await in_thread(two_legacy_sessions()) == [1, 1, 2, 3, 2]

    async def modern(token: str) -> list[int]:
        async with connect(gw.url + "/mcp", MODERN, authorization=f"Bearer {token}") as client:
            call = sdk_caller(client, service)
            return [await step(call), await step(call)]

    # A modern client has no session on the wire: its principal's session is kept between connections.
    assert await in_thread(modern("token-one")) == [1, 2]
    assert await in_thread(modern("token-two")) == [1, 2]
    assert await in_thread(modern("token-one")) == [3, 4]


def graphs_holding(sandbox_dir: Path, marker: str) -> list[Path]:
    """
    @return: The memory files in the children's private directories that mention C{marker}.
    """
    return [path for path in sandbox_dir.glob("*/memory.jsonl") if marker in path.read_text()]


@pytest_twisted.ensureDeferred
async def test_memory_file_is_the_sessions_own_and_goes_with_it(start: Any, sandbox_dir: Path) -> None:
    gw = start("memory")
    marker = f"entity-{uuid.uuid4().hex}"
    entity = {"name": marker, "entityType": "test", "observations": ["kept in the session's directory"]}
    await rest_caller(gw, "memory", "keeper")("create_entities", {"entities": [entity]})
    graphs = graphs_holding(sandbox_dir, marker)
    assert len(graphs) == 1, graphs
    graph = graphs[0]
    assert graph.parent.name.startswith("memory-"), graph
    # Not the package directory in the npm cache, which every session would share.
    assert not list((sandbox_dir / ".cache" / "memory").rglob("memory.jsonl"))
    other = json.loads(await rest_caller(gw, "memory", "other")("read_graph", {}))
    assert other == {"entities": [], "relations": []}
    response, _ = await gw.request("DELETE", "/sessions/keeper")
    assert response.code == 200
    await wait_until(lambda: not graph.exists())


# -- long-running tools with progress ----------------------------------------------------------------------


@dataclass(frozen=True)
class LongCall:
    """
    A long-running tool, what it reports and what it answers.
    """

    tool: str
    arguments: dict[str, Any]
    updates: list[tuple[float, float | None, str | None]]
    answer: str


LONG_CALLS = {
    "everything": LongCall(
        "trigger-long-running-operation",
        {"duration": 1, "steps": 4},
        [(step, 4, None) for step in range(1, 5)],
        "Long running operation completed. Duration: 1 seconds, Steps: 4.",
    ),
    "fastmcp": LongCall(
        "long_task",
        {"steps": 4, "delay": 0.1},
        [(step, 4, f"step {step} of 4") for step in range(1, 5)],
        "done 4",
    ),
}


@pytest.mark.parametrize("service", list(LONG_CALLS))
@pytest_twisted.ensureDeferred
async def test_long_running_tool_reports_progress_in_order(start: Any, service: str) -> None:
    long = LONG_CALLS[service]
    gw = start(service)
    assert await rest_caller(gw, service, "rest")(long.tool, long.arguments) == long.answer

    async def use(mode: str) -> tuple[str, list[tuple[float, float | None, str | None]]]:
        updates: list[tuple[float, float | None, str | None]] = []

        async def progress(value: float, total: float | None, message: str | None) -> None:
            updates.append((value, total, message))

        async with connect(gw.url + "/mcp", mode) as client:
            name = f"{service}.{long.tool}"
            result = await client.call_tool(name, long.arguments, progress_callback=progress)
            return text_of(result), updates

    for mode in MODES:
        assert await in_thread(use(mode)) == (long.answer, long.updates), mode


# -- what else the servers show ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_heavy_stderr_never_wedges_the_gateway(start: Any) -> None:
    gw = start("fastmcp")
    call = rest_caller(gw, "fastmcp", "loud")
    calls, kib = 100, 256
    for _ in range(calls):
        # A server whose stderr is not read blocks once the pipe (64 KiB) is full.
        assert await call("chatter", {"kib": kib}) == f"wrote {kib * 1024} bytes to stderr"
    service = gw.gateway.services["fastmcp"]
    # stderr is a pipe of its own: its last lines may arrive after the last answer.
    await wait_until(lambda: service.stderr_bytes >= calls * kib * 1024)
    assert len(service.children) == 1
    assert await call("count", {}) == "1", "the same child all along"


@pytest_twisted.ensureDeferred
async def test_the_childs_environment_is_the_sandboxs(
    start: Any, sandbox_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CANARY_API_KEY", "canary-9f2c41")
    gw = start("everything")
    env = json.loads(await rest_caller(gw, "everything", "env")("get-env", {}))
    secretive = {name for name in os.environ if any(w in name.upper() for w in ("KEY", "TOKEN", "SECRET", "PASSWORD"))}
    assert "CANARY_API_KEY" in secretive
    assert not secretive & set(env), "the gateway's secrets stay with the gateway"
    assert PASSWORD not in env.values()
    home = Path(env["HOME"])
    assert home.parent == sandbox_dir and home.name.startswith("everything-")
    assert env["TMPDIR"] == env["HOME"]
    assert env["npm_config_cache"] == str(sandbox_dir / ".cache" / "everything" / "npm")
    assert env["MCPGATEWAY_TEST_TAG"] == gw.tag  # the service's env reaches it
    response, body = await gw.call("everything", "get-structured-content", "env", {"location": "Chicago"})
    assert response.code == 200, body
    assert body["structured_content"] == json.loads(body["result"])


@pytest_twisted.ensureDeferred
async def test_filesystem_serves_its_directory_only(start: Any, files: Path, outside: Path) -> None:
    gw = start("filesystem")
    call = rest_caller(gw, "filesystem", "fs")
    assert await call("read_text_file", {"path": str(files / "hello.txt")}) == HELLO
    written = f"written-{uuid.uuid4().hex}.txt"
    await call("write_file", {"path": written, "content": "from the filesystem server"})
    assert (files / written).read_text() == "from the filesystem server"
    link = files / f"link-{uuid.uuid4().hex}"
    link.symlink_to(outside / "secret.txt")
    refused = [
        str(outside / "secret.txt"),  # outside, absolute
        f"../{outside.name}/secret.txt",  # outside, relative
        str(link),  # inside, pointing outside
    ]
    for path in refused:
        response, body = await gw.call("filesystem", "read_text_file", "fs", {"path": path})
        assert response.code == 200, body
        assert body["is_error"] is True, (path, body)
        assert "Access denied" in body["result"], (path, body)
        assert SECRET.strip() not in body["result"]
