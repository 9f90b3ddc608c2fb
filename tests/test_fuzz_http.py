"""
Bad input over real HTTP: hypothesis-generated bodies, headers and paths, and
a seeded fuzz run of 10,000 random requests against one live gateway process.
Every answer must be a JSON 4xx (or a real 200), never a 5xx, and the gateway
must still serve afterwards with no stray child.

The gateway runs as a real twistd subprocess (so the synchronous hypothesis
tests can use a blocking client without stalling a reactor).
"""

from __future__ import annotations

import base64
import http.client
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import kill_tagged
from .test_twistd import environment, free_port, running, twistd

USER, PASSWORD = "fuzz", "fuzz-password"
HIGH = "100000000 per minute"
SECURITY = ("X-Content-Type-Options", "X-Frame-Options", "Content-Security-Policy")


class Client:
    """
    A keep-alive HTTP/1.1 client that reconnects when the server closes.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def send(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
        for attempt in range(2):
            try:
                self.connection.request(method, path, body=body, headers=headers or {})
                response = self.connection.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.connection.close()
                return response, data
            except (http.client.HTTPException, ConnectionError):
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def auth(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    directory = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    tag = "fuzz-" + directory.name
    config = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "auth_user": USER,
            "auth_password": PASSWORD,
            "max_body_bytes": 4096,
        },
        "services": {
            "fx": {
                "command": [sys.executable, str(Path(__file__).parent / "servers" / "fixture_server.py")],
                "env": {"MCPGATEWAY_TEST_TAG": tag},
            }
        },
        "session": {"sandbox_dir": str(directory / "sandbox")},
        "rate_limiting": {
            "call_limit": HIGH,
            "tools_limit": HIGH,
            "session_delete_limit": HIGH,
            "default_limits": [HIGH],
            "auth_failure_limit": HIGH,
        },
    }
    path = directory / "config.json"
    path.write_text(json.dumps(config))
    command = [*twistd(), "-n", "--pidfile=", "mcpgateway", "--config", str(path)]
    with running(command, directory, port, environment(tag), tag) as process:
        process.port = port
        process.tag = tag
        yield process
        process.stop()
    kill_tagged(tag)


def check(response: Any, data: bytes) -> dict[str, Any]:
    """
    Every answer: below 500, JSON with the security headers; errors have error and code.
    """
    assert response.status < 500, (response.status, data[:300])
    assert response.getheader("Content-Type", "").startswith("application/json"), data[:300]
    for name in SECURITY:
        assert response.getheader(name), name
    body = json.loads(data)
    assert b"Traceback" not in data
    if response.status >= 400:
        assert isinstance(body["error"], str) and isinstance(body["code"], str), body
    return body


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
call_fields = st.fixed_dictionaries(
    {},
    optional={
        "tool": json_values | st.sampled_from(["echo", "counter", "../x", "a" * 200, "nope"]),
        "session_id": json_values | st.sampled_from(["s", "../../etc", "x" * 200, "ok.id"]),
        "arguments": json_values,
        "timeout": json_values | st.sampled_from([0, -1, 1e308, True, "300", 86401]),
        "metadata": json_values,
    },
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=call_fields)
def test_call_bodies(gateway: Any, body: dict[str, Any]) -> None:
    client = Client(gateway.port)
    response, data = client.send("POST", "/services/fx/call", json.dumps(body).encode(), auth())
    answer = check(response, data)
    if response.status == 200:
        assert isinstance(answer["result"], str)
        client.send("DELETE", f"/sessions/{body['session_id']}", None, auth())


@FUZZ
@given(raw=st.binary(max_size=300), content_type=st.sampled_from(["application/json", "text/plain", "", "x/y+json"]))
def test_raw_bodies(gateway: Any, raw: bytes, content_type: str) -> None:
    headers = auth()
    headers["Content-Type"] = content_type
    response, data = Client(gateway.port).send("POST", "/services/fx/call", raw, headers)
    check(response, data)


@FUZZ
@given(header=st.binary(max_size=80).map(lambda b: b.decode("latin-1").replace("\r", "").replace("\n", "")))
def test_authorization_headers(gateway: Any, header: str) -> None:
    response, data = Client(gateway.port).send("GET", "/sessions", None, {"Authorization": header})
    # Twisted refuses control characters in a header line as malformed HTTP.
    assert check(response, data)["code"] in ("unauthorized", "rate_limited", "bad_http")


@FUZZ
@given(segment=st.text(min_size=1, max_size=40).map(lambda t: "".join(c for c in t if c.isprintable() and c != "/")))
def test_path_segments(gateway: Any, segment: str) -> None:
    from urllib.parse import quote

    client = Client(gateway.port)
    for path in (f"/services/{quote(segment)}/tools", f"/sessions/{quote(segment)}", f"/{quote(segment)}"):
        method = "DELETE" if path.startswith("/sessions/") else "GET"
        response, data = client.send(method, path, None, auth())
        check(response, data)


def fuzz(port: int, count: int, seed: int) -> dict[str, Any]:
    """
    Send C{count} seeded random requests; count the answers by status and code.
    """
    chooser = random.Random(seed)
    client = Client(port)
    statuses: Counter[int] = Counter()
    codes: Counter[str] = Counter()
    started = time.monotonic()
    sessions = set()
    for _ in range(count):
        kind = chooser.random()
        headers = auth()
        method, path, body = "POST", "/services/fx/call", b""
        if kind < 0.1:
            session = f"s{chooser.randrange(20)}"
            sessions.add(session)
            body = json.dumps({"tool": "echo", "session_id": session, "arguments": {"text": "x"}}).encode()
        elif kind < 0.4:
            value = {
                "tool": chooser.choice(["echo", "", "a/b", 5, None, "x" * 300]),
                "session_id": chooser.choice(["ok", "", "../x", 3, "y" * 300]),
                "arguments": chooser.choice([{}, [], "x", 1, None]),
                "timeout": chooser.choice([300, 0, -5, "1", True, 1e999]),
            }
            body = json.dumps(value).encode()
        elif kind < 0.55:
            body = bytes(chooser.randrange(256) for _ in range(chooser.randrange(0, 200)))
        elif kind < 0.65:
            body = b"x" * chooser.choice([5000, 50000])
        elif kind < 0.75:
            headers = auth(password=chooser.choice(["wrong", "", "\u00e9"]))
            body = b"{}"
        elif kind < 0.85:
            method = chooser.choice(["GET", "PUT", "DELETE", "PATCH"])
        elif kind < 0.95:
            method, path = (
                "GET",
                chooser.choice(["/nope", "/services/%2e%2e/tools", "/sessions/%00", "/services/x/y/z"]),
            )
        else:
            headers["Content-Type"] = chooser.choice(["text/plain", "multipart/form-data; boundary=x"])
            body = b"{}"
        response, data = client.send(method, path, body or None, headers)
        statuses[response.status] += 1
        if response.status >= 500:
            raise AssertionError(f"{response.status} for {method} {path} {body[:100]!r}: {data[:200]!r}")
        answer = json.loads(data)
        codes[answer.get("code", "ok")] += 1
    took = time.monotonic() - started
    for session in sessions:
        client.send("DELETE", f"/sessions/{session}", None, auth())
    return {"requests": count, "seconds": took, "per_second": count / took, "statuses": statuses, "codes": codes}


def test_fuzz_ten_thousand_requests(gateway: Any, capsys: pytest.CaptureFixture[str]) -> None:
    report = fuzz(gateway.port, 10_000, seed=20261121)
    assert sum(report["statuses"].values()) == 10_000
    assert all(status < 500 for status in report["statuses"])
    with capsys.disabled():
        print(
            f"\nfuzz: {report['requests']} requests in {report['seconds']:.1f} s "
            f"({report['per_second']:.0f}/s); statuses {dict(sorted(report['statuses'].items()))}; "
            f"codes {dict(report['codes'].most_common())}"
        )
    client = Client(gateway.port)
    response, data = client.send("GET", "/health")
    assert response.status == 200
    response, data = client.send(
        "POST",
        "/services/fx/call",
        json.dumps({"tool": "echo", "session_id": "after", "arguments": {"text": "ok"}}).encode(),
        auth(),
    )
    assert (response.status, json.loads(data)["result"]) == (200, "ok")
    client.send("DELETE", "/sessions/after", None, auth())
