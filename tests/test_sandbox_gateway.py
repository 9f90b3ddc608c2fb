"""
The sandbox through the gateway: a child stopped by a sandbox limit (file
size, CPU, memory, the process/thread limit) fails the call with 502 (or its
start with 503) and code C{child_limit} naming the limit, its value and the
key to raise, on REST and on /mcp; it is a C{child_limit} security event and
a metric, and the session's next call gets a fresh child.  A child's stderr
tail reaches admins only unless the service says otherwise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher

from mcpgateway.children.sandbox import sandbox_capabilities
from mcpgateway.children.sandbox.launch import TRUST_VARIABLES, launcher_caches
from mcpgateway.config import ResourceLimits
from mcpgateway.mcp.spec import CAPABILITIES_KEY, MODERN_VERSION, VERSION_KEY
from mcpgateway.observe.security import SecurityFile
from mcpgateway.policy.auth import hash_token

from .conftest import fixture_service


def need_cgroup() -> None:
    capabilities = sandbox_capabilities()
    if not capabilities["cgroup"]:
        pytest.skip(f"no cgroup with pids.max can be made here: {capabilities['cgroup_unavailable']}")


@pytest_twisted.ensureDeferred
async def test_disk_filler_is_killed_and_reported(live: Any, tmp_path: Path) -> None:
    path = tmp_path / "security.jsonl"
    observer = SecurityFile.open(str(path))
    try:
        gw = live({"fx": fixture_service(sandbox={"resource_limits": {"file_size_mb": 1}})})
        response, body = await gw.call("fx", "fill", "s", {"megabytes": 1})
        assert (response.code, body["result"]) == (200, str(1024 * 1024)), "at the limit is fine"
        response, body = await gw.call("fx", "fill", "s", {"megabytes": 5})
        assert (response.code, body["code"]) == (502, "child_limit")
        assert body["exit_signal"] == 25  # SIGXFSZ
        assert (body["limit"], body["value"]) == ("file_size", 1)
        assert body["key"] == "services.fx.sandbox.resource_limits.file_size_mb"
        assert "raise services.fx.sandbox.resource_limits.file_size_mb" in body["error"]
        response, body = await gw.call("fx", "echo", "s", {"text": "back"})
        assert (response.code, body["result"], body["session_restarted"]) == (200, "back", True)
    finally:
        globalLogPublisher.removeObserver(observer)
    events = [json.loads(line) for line in path.read_text().splitlines()]
    limits = [event for event in events if event["event"] == "child_limit"]
    assert len(limits) == 1
    assert limits[0]["route"] == "service fx"
    assert limits[0]["signal"] == 25
    assert limits[0]["limit"] == "file_size"


@pytest.mark.parametrize(
    ("tool", "arguments", "limits", "limit", "key", "value"),
    [
        ("burn", {"seconds": 30}, {"cpu_seconds": 1}, "cpu", "cpu_seconds", 1),
        ("hog", {"megabytes": 512}, {"memory_mb": 64}, "memory", "memory_mb", 64),
        ("threads", {"count": 200}, {"tasks": 40}, "pids", "tasks", 40),
        # (thread stacks count against memory_mb: lift it, so that the thread limit is what stops)
        ("threads", {"count": 200}, {"processes": 1, "memory_mb": 8192}, "pids", "processes", 1),
        ("threads", {"count": 200}, {"memory_mb": 256}, "memory", "memory_mb", 256),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_limit_that_stops_a_child_is_named(
    live: Any, tool: str, arguments: dict[str, Any], limits: dict[str, int], limit: str, key: str, value: int
) -> None:
    if limit == "pids":
        need_cgroup()
    if limits.get("processes") == 1:
        # 1 process x the per-process thread allowance: more threads than that.
        arguments = {"count": ResourceLimits.threads_per_process() + 10}
    gw = live({"fx": fixture_service(sandbox={"resource_limits": limits})})
    response, body = await gw.call("fx", tool, "s", arguments)
    assert (response.code, body["code"], body["limit"], body["value"]) == (502, "child_limit", limit, value), body
    assert body["key"] == f"services.fx.sandbox.resource_limits.{key}"
    assert body["service"] == "fx" and "stderr_tail" in body  # the test's credentials are the seeds' admin
    response, body = await gw.call("fx", "echo", "s", {"text": "back"})
    assert (response.code, body["result"], body["session_restarted"]) == (200, "back", True)
    response, metrics = await gw.request("GET", "/metrics")
    assert f'mcpgateway_child_limit_stops_total{{limit="{limit}",service="fx"}} 1.0' in metrics.decode()


@pytest_twisted.ensureDeferred
async def test_a_start_stopped_by_the_process_limit_is_named_on_both_fronts(live: Any) -> None:
    need_cgroup()
    gw = live({"fx": fixture_service("--start-threads", "60", sandbox={"resource_limits": {"tasks": 20}})})
    response, body = await gw.call("fx", "echo", "s", {"text": "x"})
    assert (response.code, body["code"], body["limit"], body["value"]) == (503, "child_limit", "pids", 20), body
    assert body["key"] == "services.fx.sandbox.resource_limits.tasks"
    assert "process limit (20 tasks)" in body["error"]
    request = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "echo",
            "arguments": {"text": "x"},
            "_meta": {VERSION_KEY: MODERN_VERSION, CAPABILITIES_KEY: {}},
        },
    }
    headers = {
        b"Content-Type": [b"application/json"],
        b"Accept": [b"application/json, text/event-stream"],
        b"MCP-Protocol-Version": [MODERN_VERSION.encode()],
        b"Mcp-Method": [b"tools/call"],
        b"Mcp-Name": [b"echo"],
    }
    gw.gateway.services["fx"].failures = 0  # past the backoff: a fresh start, refused again
    response, answer = await gw.request("POST", "/services/fx/mcp", request, headers=headers)
    data = answer["error"]["data"]
    assert (data["reason"], data["limit"], data["value"], data["status"]) == ("child_limit", "pids", 20, 503), answer


@pytest_twisted.ensureDeferred
async def test_stderr_tail_reaches_admins_only_unless_the_service_says_so(live: Any) -> None:
    agent_token, admin_token = "agent-token-0123456789", "admin-token-0123456789"
    server = {
        "principals": [
            {"name": "agent", "role": "agent", "token_hash": hash_token(agent_token)},
            {"name": "boss", "role": "admin", "token_hash": hash_token(admin_token)},
        ]
    }
    gw = live(
        {
            "fx": fixture_service("--exit-at-start", "3"),
            "open": fixture_service("--exit-at-start", "3", stderr_tail="all"),
            "shut": fixture_service("--exit-at-start", "3", stderr_tail="none"),
        },
        server=server,
    )

    async def failed(service: str, token: str) -> dict[str, Any]:
        headers = {b"Authorization": [b"Bearer " + token.encode()]}
        gw.gateway.services[service].failures = 0
        response, body = await gw.request(
            "POST",
            f"/services/{service}/call",
            {"tool": "echo", "session_id": token[:5]},
            auth=None,
            headers={**headers, b"Content-Type": [b"application/json"]},
        )
        assert response.code == 503, body
        assert body["exit_status"] == 3
        return dict(body)

    assert "boom: cannot start" in (await failed("fx", admin_token))["stderr_tail"]
    assert "stderr_tail" not in await failed("fx", agent_token)
    assert "boom: cannot start" in (await failed("open", agent_token))["stderr_tail"]
    assert "stderr_tail" not in await failed("shut", admin_token)


@pytest_twisted.ensureDeferred
async def test_child_sees_only_the_documented_environment(live: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/evil.so")
    monkeypatch.setenv("SOME_GATEWAY_SECRET_X", "0123456789")  # the gateway password's value
    monkeypatch.setenv("PASS_ME", "yes")
    gw = live({"fx": fixture_service(sandbox={"env_passthrough": ["PASS_ME"]}, env={"NODE_OPTIONS": "--x"})})
    response, body = await gw.call("fx", "meta", "s")
    assert (response.code, body["result"]) == (200, "{}")
    child = next(iter(gw.gateway.sessions.get("s").children.values()))
    environ = _environ(child.pid)
    caches = launcher_caches(_cache_dir(gw.gateway.config.session.sandbox_dir, "fx"))
    base = {"PATH", "LANG", "HOME", "TMPDIR", "TMP", "TEMP", "PASS_ME", "MCPGATEWAY_TEST_TAG"}
    allowed = base | set(caches) | set(TRUST_VARIABLES)
    assert set(environ) <= allowed
    assert {name: environ[name] for name in caches} == caches
    assert environ["PASS_ME"] == "yes"
    assert environ["HOME"] == environ["TMPDIR"] == child.workdir
    assert _mode(child.workdir) == 0o700


def _cache_dir(sandbox_dir: str, service: str) -> str:
    return os.path.abspath(os.path.join(sandbox_dir, ".cache", service))


def _environ(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/environ").read_text()
    return dict(entry.split("=", 1) for entry in text.split("\0") if "=" in entry)


def _mode(path: str) -> int:
    return Path(path).stat().st_mode & 0o777
