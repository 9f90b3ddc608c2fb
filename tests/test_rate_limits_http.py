"""
Rate limits over HTTP: 429 with Retry-After and X-RateLimit-* headers per
principal and endpoint group, password guessing limited per address even
for a right guess, /health exempt, and two real gateway processes sharing
one budget through a real redis-server.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest_twisted

from .conftest import AUTH, fixture_service
from .redis_fixture import redis_server_at
from .test_twistd import environment, free_port, running, twistd


@pytest_twisted.ensureDeferred
async def test_call_limit_per_principal(live: Any) -> None:
    gw = live({"fx": fixture_service()}, rate_limiting={"call_limit": "3 per minute"})
    for number in range(3):
        response, body = await gw.call("fx", "echo", "s", {"text": "x"})
        assert response.code == 200, body
        assert response.headers.getRawHeaders(b"x-ratelimit-limit") == [b"3"]
        assert response.headers.getRawHeaders(b"x-ratelimit-remaining") == [str(2 - number).encode()]
    response, body = await gw.call("fx", "echo", "s", {"text": "x"})
    assert (response.code, body["code"]) == (429, "rate_limited")
    assert int(response.headers.getRawHeaders(b"retry-after")[0]) >= 1
    assert response.headers.getRawHeaders(b"x-ratelimit-remaining") == [b"0"]
    assert int(response.headers.getRawHeaders(b"x-ratelimit-reset")[0]) > 0
    # Other groups have their own budgets; /health is never limited.
    assert (await gw.request("GET", "/sessions"))[0].code == 200
    for _ in range(5):
        assert (await gw.request("GET", "/health", auth=None))[0].code == 200


@pytest_twisted.ensureDeferred
async def test_password_guessing_is_limited_per_address(live: Any) -> None:
    gw = live({"fx": fixture_service()}, rate_limiting={"auth_failure_limit": "3 per minute"})
    for _ in range(3):
        response, body = await gw.request("GET", "/services", auth=("tester", "guess"))
        assert (response.code, body["code"]) == (401, "unauthorized")
    response, body = await gw.request("GET", "/services", auth=("tester", "guess"))
    assert (response.code, body["code"]) == (429, "rate_limited")
    # Locked out: even the right password gains nothing until the window passes.
    response, body = await gw.request("GET", "/services", auth=AUTH)
    assert (response.code, body["code"]) == (429, "rate_limited")
    assert response.headers.getRawHeaders(b"retry-after")


@pytest_twisted.ensureDeferred
async def test_disabled_section_limits_nothing(live: Any) -> None:
    gw = live({"fx": fixture_service()}, rate_limiting={"enabled": False, "call_limit": "1 per minute"})
    for _ in range(3):
        response, _ = await gw.call("fx", "echo", "s", {"text": "x"})
        assert response.code == 200
        assert response.headers.getRawHeaders(b"x-ratelimit-limit") is None


def test_two_gateway_processes_share_one_redis_budget(tmp_path: Path) -> None:
    with redis_server_at(tmp_path) as redis:
        ports = [free_port(), free_port()]
        tag = "ratelimit-" + uuid.uuid4().hex  # unique across parallel tox environments
        gateways = []
        for index, port in enumerate(ports):
            config = {
                "server": {"host": "127.0.0.1", "port": port, "auth_user": "admin", "auth_password": "s3cret"},
                "services": {
                    "fx": {
                        "command": [sys.executable, str(Path(__file__).parent / "servers" / "fixture_server.py")],
                        "env": {"MCPGATEWAY_TEST_TAG": tag},
                    }
                },
                # Stopped with live sessions: no graceful drain to wait for.
                "session": {"sandbox_dir": str(tmp_path / f"sandbox{index}"), "drain_timeout": 0},
                # Generous timeouts: this test is about sharing, not about a
                # loaded CI machine's scheduling (fail-open has its own tests).
                "rate_limiting": {
                    "call_limit": "5 per minute",
                    "storage_uri": redis.uri + "?socket_timeout=5&socket_connect_timeout=5",
                },
            }
            path = tmp_path / f"config{index}.json"
            path.write_text(json.dumps(config))
            gateways.append((path, port))
        statuses: list[int] = []
        with (
            running(
                [*twistd(), "-n", "--pidfile=", "mcpgateway", "--config", str(gateways[0][0])],
                tmp_path,
                gateways[0][1],
                environment(tag),
                tag,
            ) as first,
            running(
                [*twistd(), "-n", "--pidfile=", "mcpgateway", "--config", str(gateways[1][0])],
                tmp_path,
                gateways[1][1],
                environment(tag),
                tag,
            ) as second,
        ):
            for gateway in (first, second):
                for _ in range(4):
                    status, _body = gateway.call("fx", "echo", "shared", ("admin", "s3cret"), text="x")
                    statuses.append(status)
            first.stop(timeout=15)
            second.stop(timeout=15)
            logs = first.text() + second.text()
        assert "rate-limit storage" not in logs, logs[-4000:]
        assert statuses == [200] * 5 + [429] * 3, (statuses, logs[-4000:])
