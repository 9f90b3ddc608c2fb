"""
The seeded fuzz run of L{tests.fuzz_gateway} (10,000 random requests: valid
calls and every kind of bad input) against the gateway as users run it, a
real C{twistd mcpgateway} subprocess, with its summary printed.

Every answer must be the README's for its input (the fuzzer's oracles), JSON
with the security headers, never a 5xx, a drop or a reset; then the gateway
still serves, holds no child beyond the sessions the valid calls opened,
logged no traceback, and leaves no process behind when stopped.

C{MCPGATEWAY_FUZZ_COUNT} and C{MCPGATEWAY_FUZZ_SEED} change the run (the
same seed sends the same requests).  The hypothesis properties and the
README's table are in L{tests.test_bad_input}.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fuzz_gateway import HTTPClient, basic, close_sessions, fuzz, request_bytes
from .test_twistd import (
    Running,
    assert_no_tagged_processes,
    assert_orderly_exit,
    environment,
    free_port,
    running,
    twistd,
)

USER, PASSWORD = "fuzz", "fuzz-password"
HIGH = "100000000 per minute"
MAX_BODY_BYTES = 4096  # small, so oversized bodies are cheap to send
FUZZ_COUNT = int(os.environ.get("MCPGATEWAY_FUZZ_COUNT", "10000"))
FUZZ_SEED = int(os.environ.get("MCPGATEWAY_FUZZ_SEED", "20261121"))


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Running, str]]:
    """
    A twistd gateway with the fixture server as C{fx}, rate limits too high
    to mask anything (the 429s of the default C{auth_failure_limit} would
    answer every bad password after the 20th), and a small body limit.
    """
    port = free_port()
    tag = "fuzz-" + uuid.uuid4().hex  # unique across parallel tox environments
    config = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "auth_user": USER,
            "auth_password": PASSWORD,
            "max_body_bytes": MAX_BODY_BYTES,
        },
        "services": {
            "fx": {
                "command": [sys.executable, str(Path(__file__).parent / "servers" / "fixture_server.py")],
                "env": {"MCPGATEWAY_TEST_TAG": tag},
            }
        },
        "session": {"sandbox_dir": str(tmp_path / "sandbox")},
        "rate_limiting": {
            "call_limit": HIGH,
            "tools_limit": HIGH,
            "session_delete_limit": HIGH,
            "default_limits": [HIGH],
            "auth_failure_limit": HIGH,
        },
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    command = [*twistd(), "-n", "--pidfile=", "mcpgateway", "--config", str(path)]
    with running(command, tmp_path, port, environment(tag), tag) as process:
        yield process, tag
    assert_no_tagged_processes(tag)


def test_fuzz_ten_thousand_requests(gateway: tuple[Running, str], capsys: pytest.CaptureFixture[str]) -> None:
    process, tag = gateway
    auth = (USER, PASSWORD)
    report = fuzz(process.url, auth, FUZZ_COUNT, FUZZ_SEED, max_body_bytes=MAX_BODY_BYTES)
    with capsys.disabled():
        print("\n" + report.summary())
    assert report.requests == FUZZ_COUNT
    assert report.ok, report.summary()
    assert report.server_errors == 0 and report.drops == 0
    # The mix reached every part of the gateway it is meant to.
    assert report.by_status[200] >= FUZZ_COUNT // 20, "valid calls got through"
    for label in ("413 body_too_large", "400 bad_http", "400 invalid_json", "400 invalid_url", "401 unauthorized"):
        assert report.by_code[label] > 0, label
    assert report.by_code["404 not_found"] > 0 and report.by_code["405 method_not_allowed"] > 0

    # Still serving, on a fresh connection, and the sessions are exactly those valid calls opened.
    with HTTPClient.for_url(process.url) as client:
        header = (b"Authorization", basic(USER, PASSWORD))
        answer = client.exchange(request_bytes(b"GET", b"/health", []))
        assert (answer.status, answer.json()["status"]) == (200, "healthy")
        session = sorted(report.sessions)[0]
        body = json.dumps({"tool": "echo", "session_id": session, "arguments": {"text": "after the fuzz"}}).encode()
        answer = client.exchange(
            request_bytes(b"POST", b"/services/fx/call", [header, (b"Content-Type", b"application/json")], body)
        )
        assert (answer.status, answer.json()["result"]) == (200, "after the fuzz")
        answer = client.exchange(request_bytes(b"GET", b"/sessions", [header]))
        assert set(answer.json()) == report.sessions
    statuses = close_sessions(process.url, auth, report.sessions)
    assert set(statuses.values()) == {200}

    exit_status, _ = process.stop(signal.SIGTERM)
    assert_orderly_exit(process, exit_status)
    log = process.text()
    assert "Unhandled" not in log and "Traceback" not in log
    assert_no_tagged_processes(tag)
