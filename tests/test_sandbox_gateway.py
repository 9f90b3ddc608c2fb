"""
The sandbox through the gateway: a child killed by its file-size limit fails
the call with 502, is reported as a C{child_limit} security event, and the
session's next call gets a fresh child.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.logger import globalLogPublisher

from mcpgateway.observe.security import SecurityFile

from .conftest import fixture_service


@pytest_twisted.ensureDeferred
async def test_disk_filler_is_killed_and_reported(live: Any, tmp_path: Path) -> None:
    path = tmp_path / "security.jsonl"
    observer = SecurityFile.open(str(path))
    try:
        gw = live({"fx": fixture_service(sandbox={"resource_limits": {"file_size_mb": 1}})})
        response, body = await gw.call("fx", "fill", "s", {"megabytes": 1})
        assert (response.code, body["result"]) == (200, str(1024 * 1024)), "at the limit is fine"
        response, body = await gw.call("fx", "fill", "s", {"megabytes": 5})
        assert (response.code, body["code"]) == (502, "child_failed")
        assert body["exit_signal"] == 25  # SIGXFSZ
        response, body = await gw.call("fx", "echo", "s", {"text": "back"})
        assert (response.code, body["result"], body["session_restarted"]) == (200, "back", True)
    finally:
        globalLogPublisher.removeObserver(observer)
    events = [json.loads(line) for line in path.read_text().splitlines()]
    limits = [event for event in events if event["event"] == "child_limit"]
    assert len(limits) == 1
    assert limits[0]["route"] == "service fx"
    assert limits[0]["signal"] == 25


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
    assert set(environ) <= {"PATH", "LANG", "HOME", "TMPDIR", "TMP", "TEMP", "PASS_ME", "MCPGATEWAY_TEST_TAG"}
    assert environ["PASS_ME"] == "yes"
    assert environ["HOME"] == environ["TMPDIR"] == child.workdir
    assert _mode(child.workdir) == 0o700


def _environ(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/environ").read_text()
    return dict(entry.split("=", 1) for entry in text.split("\0") if "=" in entry)


def _mode(path: str) -> int:
    return Path(path).stat().st_mode & 0o777
