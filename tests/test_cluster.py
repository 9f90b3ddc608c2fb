"""
One session space across gateway processes (L{mcpgateway.cluster}): real
C{twistd mcpgateway} processes, a real C{redis-server}, real children (the
stateful todo server: a call that reached another child would not see the
todos of the earlier ones), HTTP over loopback sockets.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcpgateway.config import ConfigError, parse_config
from mcpgateway.devcert import main as devcert

from .cluster_fixture import AUTH, SECRET, gateway_config, ports, start_gateway
from .conftest import FIXTURE_SERVER, PYTHON, kill_tagged, tagged_processes
from .redis_fixture import RedisServer, redis_server_at
from .test_twistd import environment, http, twistd

# -- configuration -------------------------------------------------------------------


def raw(**sections: Any) -> dict[str, Any]:
    server = {"auth_user": "u", "auth_password": "p", **sections.pop("server", {})}
    return {"server": server, **sections}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param(
            raw(server={"workers": 2}), "server.workers: 2 workers share their sessions", id="workers-no-redis"
        ),
        pytest.param(raw(server={"workers": 0}), "server.workers: expected 1 to 64", id="zero-workers"),
        pytest.param(
            raw(server={"workers": "many"}), 'server.workers: expected a number of processes or "auto"', id="words"
        ),
        pytest.param(
            raw(cluster={"redis": "redis://127.0.0.1/0", "secret": "short"}),
            "cluster.secret: the gateways' shared secret must be at least 16",
            id="short-secret",
        ),
        pytest.param(raw(cluster={"redis": "redis://127.0.0.1/0"}), "cluster.secret:", id="no-secret"),
        pytest.param(
            raw(cluster={"redis": "http://127.0.0.1/", "secret": SECRET}),
            "cluster.redis: expected redis://",
            id="not-redis",
        ),
        pytest.param(
            raw(cluster={"redis": "redis://127.0.0.1/0", "secret": SECRET, "entry_ttl": 30}),
            "cluster.entry_ttl: 30 s must exceed session.cleanup_interval (60 s)",
            id="ttl-below-sweep",
        ),
        pytest.param(
            raw(cluster={"redis": "redis://x", "secret": SECRET, "peers": []}), "cluster.peers", id="unknown-key"
        ),
        pytest.param(
            raw(cluster={"redis": "redis://x", "secret": SECRET, "secret_file": "/nonexistent"}),
            "cluster: give secret or secret_file, not both",
            id="secret-twice",
        ),
        pytest.param(
            raw(cluster={"redis": "redis://x", "secret_file": "/nonexistent/secret"}),
            "cluster.secret_file: cannot read /nonexistent/secret",
            id="secret-file-missing",
        ),
    ],
)
def test_unusable_cluster_configuration_names_the_key(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config, {})
    assert message in str(caught.value)


def test_cluster_configuration_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    config = parse_config(
        raw(server={"workers": "auto"}, cluster={"redis": "redis://r:6379/1", "secret_file": str(secret)}), {}
    )
    assert config.server.workers == len(os.sched_getaffinity(0))
    assert config.cluster.secret == SECRET
    assert config.cluster.enabled
    assert not parse_config(raw(), {}).cluster.enabled
    assert parse_config(raw(), {}).server.workers == 1


@pytest.mark.parametrize("redis", ["", " ", "${MCP_CLUSTER_REDIS|}", "${MCP_CLUSTER_REDIS}"])
def test_an_empty_redis_means_no_cluster(redis: str) -> None:
    """
    C{cluster.redis} empty (an unset variable, as in the shipped configuration
    without C{MCP_CLUSTER_REDIS}): the process is on its own, and needs no secret.
    """
    config = parse_config(raw(cluster={"redis": redis, "secret": "${MCP_CLUSTER_SECRET|}", "internal_port": "0"}), {})
    assert not config.cluster.enabled
    assert config.cluster.secret == ""
    with pytest.raises(ConfigError, match=r"server\.workers: 2 workers share their sessions through Redis"):
        parse_config(raw(server={"workers": 2}, cluster={"redis": redis}), {})


@pytest.mark.parametrize(
    ("server", "extra", "message"),
    [
        ({"workers": 2}, ["--listen", "tcp:0"], "--listen cannot be combined"),
        ({"workers": 2, "metrics_listen": "tcp:0"}, [], "server.metrics_listen: 2 workers cannot share"),
        ({}, ["--worker", "0"], "--worker: only for the workers a supervisor starts"),
        ({"workers": 2}, ["--worker", "2"], "--worker: expected a number below server.workers (2)"),
    ],
)
def test_twistd_refuses_workers_it_cannot_serve(
    tmp_path: Path, server: dict[str, Any], extra: list[str], message: str
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(raw(server=server, cluster={"redis": "redis://127.0.0.1:1/0", "secret": SECRET})))
    result = subprocess.run(
        [*twistd(), "-n", "mcpgateway", "--config", str(config), *extra],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# -- two gateways, one session space ------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server_at(tmp_path) as server:
        yield server


def keys(server: RedisServer, pattern: str = "mcpgateway:session:*") -> dict[str, str]:
    """
    @return: The directory's entries: key -> owner.
    """
    client = server.client()
    return {key.decode(): (client.get(key) or b"").decode() for key in client.scan_iter(match=pattern)}


#: What an MCP client sends on /mcp: the Accept header, and a legacy-era initialize.
MCP_ACCEPT = {"Accept": "application/json, text/event-stream"}
MCP_INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


def request(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    sent = {"Authorization": "Basic " + base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()}
    if data is not None:
        sent["Content-Type"] = "application/json"
    sent.update(headers or {})
    assert url.startswith("http://127.0.0.1:")
    req = urllib.request.Request(url, data=data, headers=sent, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=20) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def test_two_gateways_serve_one_session_space(tmp_path: Path, redis_server: RedisServer) -> None:
    tag = uuid.uuid4().hex
    first, second = ports(2)
    a_config = gateway_config(tmp_path / "a", first, redis_server.uri, tag)
    b_config = gateway_config(tmp_path / "b", second, redis_server.uri, tag)
    with start_gateway(a_config, first, tag) as a, start_gateway(b_config, second, tag) as b:
        # Calls of one session alternate between the gateways: one child sees them all.
        for index in range(4):
            gateway = (a, b)[index % 2]
            status, body = gateway.call("alpha", "add_todo", text=f"item {index}")
            assert status == 200, body
        status, body = b.call("alpha", "list_todos")
        assert status == 200
        assert [todo["text"] for todo in body["structured_content"]["todos"]] == [f"item {i}" for i in range(4)]
        assert len(a.children()) == 1
        entries = keys(redis_server)
        assert list(entries) == ["mcpgateway:session:alpha"]
        owner = entries["mcpgateway:session:alpha"]
        assert owner.startswith("http://127.0.0.1:")

        # The owner lists it; the other process does not hold it.
        held = [json.loads(request("GET", g.url + "/sessions")[2]) for g in (a, b)]
        assert sorted(len(h) for h in held) == [0, 1]

        # DELETE through either gateway closes it at its owner, and the entry goes.
        status, body = b.call("alpha", "list_todos")
        status, _, raw_body = request("DELETE", a.url + "/sessions/alpha")
        assert status == 200, raw_body
        status, _, _ = request("DELETE", b.url + "/sessions/alpha")
        assert status == 404
        deadline = time.monotonic() + 5
        while (a.children() or keys(redis_server)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.children() == []
        assert keys(redis_server) == {}

        # A forged forwarding header is refused, not obeyed.
        status, _, raw_body = request(
            "POST",
            a.url + "/services/todo/call",
            {"tool": "list_todos", "session_id": "beta"},
            {"X-Mcpgateway-Forwarded": "not-the-secret"},
        )
        assert status == 403
        assert json.loads(raw_body)["code"] == "forbidden"

        # /metrics: this process's address and worker, the fleet from the directory.
        a.call("gamma", "add_todo", text="x")
        b.call("delta", "add_todo", text="y")
        fleet = ("mcpgateway_fleet_sessions 2.0", "mcpgateway_fleet_instances 2.0")
        # Counted by a reaper sweep (session.cleanup_interval is 1 s) after both calls.
        wait_for(lambda: all(line in request("GET", a.url + "/metrics")[2].decode() for line in fleet), 10)
        text = request("GET", a.url + "/metrics")[2].decode()
        assert 'mcpgateway_instance_info{address="http://127.0.0.1:' in text
        assert 'worker="0"} 1.0' in text
        assert all(line in text for line in fleet)
        assert 'mcpgateway_forwards_total{outcome="answered"}' in text

        for gateway in (a, b):
            assert gateway.stop() == -signal.SIGTERM
        # A stopped gateway closed its sessions and left the directory.
        assert keys(redis_server, "mcpgateway:*") == {}
    assert tagged_processes(tag) == []


def test_first_calls_racing_on_two_gateways_start_one_child(tmp_path: Path, redis_server: RedisServer) -> None:
    tag = uuid.uuid4().hex
    first, second = ports(2)
    a_config = gateway_config(tmp_path / "a", first, redis_server.uri, tag)
    b_config = gateway_config(tmp_path / "b", second, redis_server.uri, tag)
    sessions = [f"race-{index}" for index in range(6)]
    with start_gateway(a_config, first, tag) as a, start_gateway(b_config, second, tag) as b:
        answers: list[tuple[int, Any]] = []
        lock = threading.Lock()

        def first_call(gateway: Any, session: str, barrier: threading.Barrier) -> None:
            barrier.wait()
            answer = gateway.call(session, "add_todo", text=gateway.url)
            with lock:
                answers.append(answer)

        threads = []
        for session in sessions:
            barrier = threading.Barrier(2)
            threads += [threading.Thread(target=first_call, args=(g, session, barrier)) for g in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert [status for status, _ in answers] == [200] * 12, answers
        # Exactly one child per session, and it saw both first calls.
        assert len(tagged_processes(tag)) == len(sessions)
        for session in sessions:
            body = a.call(session, "list_todos")[1]
            assert len(body["structured_content"]["todos"]) == 2, body
        assert len(keys(redis_server)) == len(sessions)


def test_a_session_refused_after_its_claim_leaves_the_directory(tmp_path: Path, redis_server: RedisServer) -> None:
    """
    A first call claims its session before the process opens it.  When the
    process then refuses it (here: full, 429; likewise a drain that began
    in between, 503), the claim goes with the refusal, so the retry on another
    process opens the session there, instead of being forwarded back to be
    refused again (or answered C{session_lost} once that process is gone).
    """
    tag = uuid.uuid4().hex
    first, second = ports(2)
    a_config = gateway_config(tmp_path / "a", first, redis_server.uri, tag, session={"max_total_sessions": 1})
    b_config = gateway_config(tmp_path / "b", second, redis_server.uri, tag)
    with start_gateway(a_config, first, tag) as a, start_gateway(b_config, second, tag) as b:
        assert a.call("held", "add_todo", text="a's one session")[0] == 200
        status, body = a.call("refused", "add_todo", text="x")
        assert (status, body["code"]) == (429, "session_limit"), body
        assert "mcpgateway:session:refused" not in keys(redis_server)
        status, body = b.call("refused", "add_todo", text="y")
        assert status == 200, body
        assert [todo["text"] for todo in b.call("refused", "list_todos")[1]["structured_content"]["todos"]] == ["y"]
        held = {g.url: json.loads(request("GET", g.url + "/sessions")[2]) for g in (a, b)}
        assert (sorted(held[a.url]), sorted(held[b.url])) == (["held"], ["refused"]), held
        for gateway in (a, b):
            assert gateway.stop() == -signal.SIGTERM
    assert tagged_processes(tag) == []


def test_an_mcp_session_is_served_by_its_owner(tmp_path: Path, redis_server: RedisServer) -> None:
    tag = uuid.uuid4().hex
    first, second = ports(2)
    a_config = gateway_config(tmp_path / "a", first, redis_server.uri, tag)
    b_config = gateway_config(tmp_path / "b", second, redis_server.uri, tag)
    mcp = dict(MCP_ACCEPT)
    with start_gateway(a_config, first, tag) as a, start_gateway(b_config, second, tag) as b:
        status, headers, _ = request("POST", a.url + "/mcp", MCP_INITIALIZE, mcp)
        assert status == 200
        session = headers["Mcp-Session-Id"]
        assert list(keys(redis_server)) == [f"mcpgateway:session:{session}"]
        version = {**mcp, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"}
        request("POST", b.url + "/mcp", {"jsonrpc": "2.0", "method": "notifications/initialized"}, version)
        for index, gateway in enumerate((b, a, b)):
            call = {
                "jsonrpc": "2.0",
                "id": 2 + index,
                "method": "tools/call",
                "params": {"name": "todo.add_todo", "arguments": {"text": f"t{index}"}},
            }
            status, headers, raw_body = request("POST", gateway.url + "/mcp", call, version)
            assert status == 200, raw_body
            assert headers.get("Mcp-Session-Id", session) == session
            text = raw_body.decode()
            assert f"Added todo #{index + 1}" in text, text
        assert len(tagged_processes(tag)) == 1
        # An unknown session id is still a 404 wherever it lands.
        status, _, _ = request("POST", b.url + "/mcp", call, {**version, "Mcp-Session-Id": "mcp-" + "0" * 32})
        assert status == 404
        status, _, _ = request("DELETE", b.url + "/mcp", None, version)
        assert status == 200
        # The child stops and the entry goes after the answer, each in the background.
        deadline = time.monotonic() + 5
        while (tagged_processes(tag) or keys(redis_server)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tagged_processes(tag) == []
        assert keys(redis_server) == {}


def test_redis_down_is_a_clear_503_and_held_sessions_keep_working(tmp_path: Path, redis_server: RedisServer) -> None:
    tag = uuid.uuid4().hex
    (port,) = ports(1)
    config = gateway_config(tmp_path / "a", port, redis_server.uri, tag)
    with start_gateway(config, port, tag) as a:
        assert a.call("held", "add_todo", text="x")[0] == 200
        redis_server.stop()
        status, body = a.call("held", "list_todos")
        assert status == 200
        assert body["result"] == "#1 [ ] x"
        status, body = a.call("new", "list_todos")
        assert status == 503
        assert body["code"] == "cluster_unavailable"
        # An MCP session that cannot be entered in the directory is not kept either.
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
        status, headers, raw = request("POST", a.url + "/mcp", init, {"Accept": "application/json, text/event-stream"})
        assert status == 503 and "Mcp-Session-Id" not in headers, raw
        assert "cluster_unavailable" in raw.decode()
        assert sorted(json.loads(request("GET", a.url + "/sessions")[2])) == ["held"]
        assert "Traceback" not in a.text()


# -- workers ------------------------------------------------------------------------


def worker_pids(supervisor: int) -> list[int]:
    """
    @return: The worker processes of C{supervisor} (its children).
    """
    found = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True).stdout.split()
    return sorted(int(pid) for pid in found)


def wait_for(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_workers_share_the_port_and_the_sessions(tmp_path: Path, redis_server: RedisServer) -> None:
    tag = uuid.uuid4().hex
    (port,) = ports(1)
    config = gateway_config(tmp_path / "w", port, redis_server.uri, tag, workers=2)
    with start_gateway(config, port, tag) as gateway:
        wait_for(lambda: all(gateway.text().count(f"(worker {i}) at") == 1 for i in (0, 1)), timeout=30)
        workers = worker_pids(gateway.process.pid)
        assert len(workers) == 2
        # New connections each time: the kernel spreads them over the workers.
        for index in range(12):
            session = f"w{index}"
            assert gateway.call(session, "add_todo", text="a")[0] == 200
            assert gateway.call(session, "add_todo", text="b")[0] == 200
            body = gateway.call(session, "list_todos")[1]
            assert len(body["structured_content"]["todos"]) == 2, body
        assert len(tagged_processes(tag)) == 12
        owners = set(keys(redis_server).values())
        assert len(owners) == 2, owners  # both workers own sessions

        # A dead worker is replaced; its sessions are lost, the others' kept.
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: gateway.text().count("(worker 0) at") == 2, timeout=30)  # its replacement listens
        assert len(worker_pids(gateway.process.pid)) == 2
        assert worker_pids(gateway.process.pid) != workers
        wait_healthy_all(gateway.url)
        outcomes = {gateway.call(f"w{index}", "list_todos")[0] for index in range(12)}
        assert outcomes <= {200, 503}
        assert 200 in outcomes
        assert "worker 0 ended" in gateway.text()

        # Stopping the supervisor stops every worker and every child.
        assert gateway.stop() == -signal.SIGTERM
        assert worker_pids(gateway.process.pid) == []
        wait_for(lambda: tagged_processes(tag) == [], timeout=5)
        assert "every worker has stopped" in gateway.text()


def wait_healthy_all(url: str) -> None:
    for _ in range(10):
        assert http("GET", url + "/health")[0] == 200


def test_workers_daemonized_with_tls_and_stopped_by_pidfile(tmp_path: Path, redis_server: RedisServer) -> None:
    tag = uuid.uuid4().hex
    (port,) = ports(1)
    pem = tmp_path / "server.pem"
    devcert([str(pem), "--host", "127.0.0.1"])
    config = gateway_config(tmp_path / "d", port, redis_server.uri, tag, workers=2)
    raw_config = json.loads(config.read_text())
    raw_config["server"]["tls_cert"] = str(pem)
    config.write_text(json.dumps(raw_config))
    pidfile = tmp_path / "twistd.pid"
    logfile = tmp_path / "twistd.log"
    started = subprocess.run(
        [*twistd(), f"--pidfile={pidfile}", f"--logfile={logfile}", "mcpgateway", "--config", str(config)],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    wait_for(lambda: pidfile.exists())
    supervisor = int(pidfile.read_text())
    try:
        context = ssl.create_default_context(cafile=str(pem))

        def call(session: str, tool: str, **arguments: Any) -> dict[str, Any]:
            body = json.dumps({"tool": tool, "session_id": session, "arguments": arguments}).encode()
            req = urllib.request.Request(
                f"https://127.0.0.1:{port}/services/todo/call",
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "Authorization": "Basic " + base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode(),
                },
            )
            with urllib.request.urlopen(req, timeout=20, context=context) as response:  # noqa: S310
                return dict(json.loads(response.read()))

        def answering() -> bool:
            try:
                return call("tls", "add_todo", text="x")["result"] == "Added todo #1: x"
            except OSError:
                return False

        wait_for(answering, timeout=30)
        for _ in range(6):
            assert call("tls", "list_todos")["result"] == "#1 [ ] x"
        assert len(worker_pids(supervisor)) == 2
        # The workers' lines reach the daemon's log (worker 1 may still be starting).
        wait_for(lambda: all(f"worker {i}: " in logfile.read_text() for i in (0, 1)), timeout=30)
    finally:
        os.kill(supervisor, signal.SIGTERM)
        wait_for(lambda: not os.path.exists(f"/proc/{supervisor}"), timeout=20)
    wait_for(lambda: tagged_processes(tag) == [], timeout=5)
    assert "every worker has stopped" in logfile.read_text()
    kill_tagged(tag)


def test_owner_gone_is_session_lost_and_a_retry_starts_afresh(tmp_path: Path, redis_server: RedisServer) -> None:
    tag = uuid.uuid4().hex
    first, second = ports(2)
    a_config = gateway_config(tmp_path / "a", first, redis_server.uri, tag)
    b_config = gateway_config(tmp_path / "b", second, redis_server.uri, tag)
    with start_gateway(a_config, first, tag) as a, start_gateway(b_config, second, tag) as b:
        assert a.call("lost", "add_todo", text="x")[0] == 200
        assert b.call("lost", "list_todos")[1]["result"] == "#1 [ ] x"
        a.kill()
        status, body = b.call("lost", "list_todos")
        assert status == 503
        assert body["code"] == "session_lost"
        assert "state is lost" in body["error"]
        assert keys(redis_server) == {}
        # Its port refuses connections: it is off the list of processes that take new sessions too.
        assert keys(redis_server, "mcpgateway:instance:*").keys() == {f"mcpgateway:instance:{b.internal_address()}"}
        # The SignalWire skill re-sends a 5xx: the retry starts a new, empty session here.
        status, body = b.call("lost", "list_todos")
        assert status == 200
        assert body["structured_content"]["todos"] == []
        assert list(keys(redis_server).values()) == [next(iter(keys(redis_server).values()))]
    kill_tagged(tag)


def test_a_gateway_restarted_at_its_address_does_not_pass_off_new_sessions_as_old(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """
    SIGKILL a gateway with a fixed internal port and start it again at once
    (systemd's Restart=, or the worker supervisor): its predecessor's
    entries still name that address, but their children are gone, so their
    sessions are C{session_lost}, through the other gateway and at its own
    port, not answered by new, empty sessions.
    """
    tag = uuid.uuid4().hex
    first, second, internal = ports(3)
    # Entries that outlive a slow restart: the test is about entries still there.
    a_config = gateway_config(tmp_path / "a", first, redis_server.uri, tag, internal_port=internal, entry_ttl=60)
    b_config = gateway_config(tmp_path / "b", second, redis_server.uri, tag, entry_ttl=60)
    with start_gateway(b_config, second, tag) as b:
        with start_gateway(a_config, first, tag) as a:
            for session in ("via-b", "at-a"):
                assert a.call(session, "add_todo", text="x")[0] == 200
            assert b.call("via-b", "list_todos")[1]["result"] == "#1 [ ] x"
            a.kill()
        with start_gateway(a_config, first, tag) as a:
            for gateway, session in ((b, "via-b"), (a, "at-a")):
                status, body = gateway.call(session, "list_todos")
                assert (status, body["code"]) == (503, "session_lost"), body
                assert f"mcpgateway:session:{session}" not in keys(redis_server)
                status, body = gateway.call(session, "list_todos")  # re-sent: a new, empty session
                assert status == 200, body
                assert body["structured_content"]["todos"] == []
            for session in ("via-b", "at-a"):
                assert request("DELETE", f"{b.url}/sessions/{session}")[0] == 200
            deadline = time.monotonic() + 5
            while tagged_processes(tag) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert tagged_processes(tag) == []  # no child left behind
    kill_tagged(tag)


def test_a_draining_gateway_passes_new_sessions_on(tmp_path: Path, redis_server: RedisServer) -> None:
    """
    A gateway that drains keeps serving its live sessions and passes every
    new one on to a gateway that takes new sessions, so a client whose
    balancer still sends it there (the SignalWire skill re-sends a 503 at
    once, without waiting for Retry-After) never sees the drain.
    """
    tag = uuid.uuid4().hex
    first, second = ports(2)
    a_config = gateway_config(tmp_path / "a", first, redis_server.uri, tag, drain_timeout=30)
    b_config = gateway_config(tmp_path / "b", second, redis_server.uri, tag)
    with start_gateway(a_config, first, tag) as a, start_gateway(b_config, second, tag) as b:
        assert a.call("live", "add_todo", text="kept")[0] == 200
        time.sleep(1.5)  # one reaper sweep: both are listed as taking new sessions
        status, _, raw = request("POST", a.url + "/admin/drain")
        assert status == 202, raw
        for session in ("fresh-1", "fresh-2"):
            status, body = a.call(session, "add_todo", text=session)
            assert status == 200, body
        owners = keys(redis_server)
        assert owners["mcpgateway:session:live"] != owners["mcpgateway:session:fresh-1"]
        assert owners["mcpgateway:session:fresh-1"] == owners["mcpgateway:session:fresh-2"]
        held = {g.url: set(json.loads(request("GET", g.url + "/sessions")[2])) for g in (a, b)}
        assert held == {a.url: {"live"}, b.url: {"fresh-1", "fresh-2"}}, held
        assert b.call("fresh-1", "list_todos")[1]["result"] == "#1 [ ] fresh-1"
        assert a.call("live", "list_todos")[1]["result"] == "#1 [ ] kept"
        assert keys(redis_server, "mcpgateway:instance:*").keys() == {f"mcpgateway:instance:{b.internal_address()}"}
        # An MCP client's initialize names no session: it is passed on whole,
        # the session opened and claimed there, and its requests forwarded.
        status, headers, raw = request("POST", a.url + "/mcp", MCP_INITIALIZE, MCP_ACCEPT)
        assert status == 200, raw
        mcp_session = headers["Mcp-Session-Id"]
        assert keys(redis_server)[f"mcpgateway:session:{mcp_session}"] == owners["mcpgateway:session:fresh-1"]
        legacy = {**MCP_ACCEPT, "Mcp-Session-Id": mcp_session, "MCP-Protocol-Version": "2025-06-18"}
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "todo.add_todo", "arguments": {"text": "via mcp"}},
        }
        status, _, raw = request("POST", a.url + "/mcp", call, legacy)
        assert status == 200, raw
        assert "Added todo #1" in raw.decode(), raw
        # A 2026-07-28 request opens no session of its client's: passed on too.
        modern = {
            **MCP_ACCEPT,
            "MCP-Protocol-Version": "2026-07-28",
            "Mcp-Method": "tools/call",
            "Mcp-Name": "todo.add_todo",
        }
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        call["params"] = {**call["params"], "_meta": meta}
        status, _, raw = request("POST", a.url + "/mcp", call, modern)
        assert status == 200, raw
        assert "Added todo #1" in raw.decode(), raw
        held = {g.url: len(json.loads(request("GET", g.url + "/sessions")[2])) for g in (a, b)}
        assert held == {a.url: 1, b.url: 4}, held
        assert request("DELETE", a.url + "/mcp", None, legacy)[0] == 200
        for session in ("live", "fresh-1", "fresh-2"):
            assert request("DELETE", a.url + f"/sessions/{session}")[0] == 200
        (modern_session,) = json.loads(request("GET", b.url + "/sessions")[2])
        assert request("DELETE", b.url + f"/sessions/{modern_session}")[0] == 200
        # The drained gateway exits on SIGTERM at once; the other stays.
        assert a.stop() == -signal.SIGTERM
        deadline = time.monotonic() + 5
        while tagged_processes(tag) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tagged_processes(tag) == []  # no child left behind
    kill_tagged(tag)


def test_an_event_stream_answer_is_streamed_through_a_forwarding_gateway(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    tag = uuid.uuid4().hex
    first, second = ports(2)
    fixture = {"fx": {"command": [PYTHON, FIXTURE_SERVER]}}
    a_config = gateway_config(tmp_path / "a", first, redis_server.uri, tag, services=fixture)
    b_config = gateway_config(tmp_path / "b", second, redis_server.uri, tag, services=fixture)
    accept = {"Accept": "application/json, text/event-stream"}
    with start_gateway(a_config, first, tag) as a, start_gateway(b_config, second, tag) as b:
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t"}},
        }
        _, headers, _ = request("POST", a.url + "/mcp", init, accept)
        session = headers["Mcp-Session-Id"]
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {
                "name": "fx.slow_progress",
                "arguments": {"steps": 3, "delay": 1.0},
                "_meta": {"progressToken": "tok"},
            },
        }
        sent = {
            **accept,
            "Mcp-Session-Id": session,
            "MCP-Protocol-Version": "2025-06-18",
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode(),
        }
        req = urllib.request.Request(b.url + "/mcp", data=json.dumps(call).encode(), headers=sent)  # noqa: S310
        started = time.monotonic()
        with urllib.request.urlopen(req, timeout=20) as response:  # noqa: S310
            assert response.headers["Content-Type"].startswith("text/event-stream")
            line = b""
            while b"notifications/progress" not in line:
                line = response.readline()
                assert line, "the stream ended without a progress event"
            first_at = time.monotonic() - started
            rest = response.read()
            total = time.monotonic() - started
        # The first progress event came through B while A's child was still working.
        assert first_at < total - 1.0, (first_at, total)
        assert rest.count(b"notifications/progress") == 2
        assert b"done 3" in rest
        assert len(tagged_processes(tag)) == 1  # one child, at the owner
