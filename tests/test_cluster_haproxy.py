"""
Across hosts: real HAProxy (the shipped C{config/haproxy.cfg}, as it is) in
front of three real C{twistd mcpgateway} processes on loopback ports, which
share their sessions through a real C{redis-server}.

Round robin spreads every call anywhere; each session's calls still reach
its one child (the todo server keeps what the earlier calls added).  A
SIGKILLed gateway fails only its own sessions, with 503 C{session_lost},
and their directory entries are removed; the other gateways keep serving.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster_fixture import Gateway, gateway_config, ports, start_gateway
from .conftest import kill_tagged, require_binary, tagged_processes
from .redis_fixture import RedisServer, redis_server_at
from .test_twistd import environment, http

HAPROXY_CONFIG = Path(__file__).resolve().parent.parent / "config" / "haproxy.cfg"
SESSIONS = 12
CALLS = 3


@contextlib.contextmanager
def haproxy(port: int, gateways: list[int], directory: Path) -> Iterator[str]:
    """
    Run HAProxy with the shipped configuration until the block ends.

    @return: Its URL.
    """
    binary = require_binary("haproxy")
    env = environment(
        MCPGW_BIND=f"127.0.0.1:{port}", **{f"MCPGW_GW{i + 1}": f"127.0.0.1:{p}" for i, p in enumerate(gateways)}
    )
    output = directory / "haproxy.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(HAPROXY_CONFIG)], env=env, stdout=sink, stderr=sink, stdin=subprocess.DEVNULL
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                pytest.fail(f"haproxy exited with {process.returncode}: {output.read_text(errors='replace')}")
            with contextlib.suppress(OSError):
                if http("GET", url + "/health", timeout=2)[0] == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail("haproxy did not answer")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def owners(server: RedisServer) -> dict[str, str]:
    """
    @return: session id -> owner address, from the directory.
    """
    client = server.client()
    prefix = "mcpgateway:session:"
    return {
        key.decode()[len(prefix) :]: (client.get(key) or b"").decode() for key in client.scan_iter(match=prefix + "*")
    }


def internal_address(gateway: Gateway) -> str:
    """
    @return: The gateway's internal address, as its log announced it.
    """
    for line in gateway.text().splitlines():
        if "forwarded calls reach this process" in line:
            return line.rsplit(" at ", 1)[1].strip()
    raise AssertionError("no internal address in the log")


def test_haproxy_three_gateways_and_one_killed(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    gateway_ports = ports(3)
    (front,) = [p for p in ports(4) if p not in gateway_ports][:1]
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server_at(tmp_path))
        gateways = [
            stack.enter_context(start_gateway(gateway_config(tmp_path / f"gw{i}", port, redis.uri, tag), port, tag))
            for i, port in enumerate(gateway_ports)
        ]
        url = stack.enter_context(haproxy(front, gateway_ports, tmp_path))
        balanced = Gateway(gateways[0].process, gateways[0].output, url, tag)  # calls through HAProxy

        sessions = [f"call-{index}" for index in range(SESSIONS)]
        for round_number in range(CALLS):
            for session in sessions:
                status, body = balanced.call(session, "add_todo", text=f"{session} #{round_number}")
                assert status == 200, body
        for session in sessions:
            status, body = balanced.call(session, "list_todos")
            assert status == 200, body
            texts = [todo["text"] for todo in body["structured_content"]["todos"]]
            assert texts == [f"{session} #{n}" for n in range(CALLS)]  # every call reached its child
        assert len(tagged_processes(tag)) == SESSIONS

        # Sessions spread over the three gateways.
        placed = owners(redis)
        assert sorted(placed) == sorted(sessions)
        addresses = {internal_address(gateway): gateway for gateway in gateways}
        spread = Counter(placed.values())
        assert set(spread) == set(addresses), spread

        # SIGKILL the gateway holding the most sessions.
        victim_address = spread.most_common(1)[0][0]
        victim = addresses[victim_address]
        doomed = {session for session, owner in placed.items() if owner == victim_address}
        victim.kill()
        for session in sessions:
            status, body = balanced.call(session, "list_todos")
            if session in doomed:
                assert status == 503, body
                assert body["code"] == "session_lost"
            else:
                assert status == 200, body
                assert len(body["structured_content"]["todos"]) == CALLS
        # Only the dead gateway's entries were removed; its children went with it.
        assert set(owners(redis)) == set(sessions) - doomed
        deadline = time.monotonic() + 5
        while len(tagged_processes(tag)) != SESSIONS - len(doomed) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(tagged_processes(tag)) == SESSIONS - len(doomed)

        # The others keep serving, new sessions included; a lost session's
        # retry (the SignalWire skill re-sends a 5xx) starts afresh.
        for session in ["after-1", "after-2", "after-3", next(iter(doomed))]:
            status, body = balanced.call(session, "add_todo", text="again")
            assert status == 200, body
            assert body["result"] == "Added todo #1: again"
        assert victim_address not in set(owners(redis).values())

        for gateway in gateways:
            if gateway is not victim:
                gateway.stop()
    deadline = time.monotonic() + 5
    while tagged_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    leaked = tagged_processes(tag)
    kill_tagged(tag)
    assert leaked == []


def test_readme_shows_the_tested_haproxy_config() -> None:
    readme = (HAPROXY_CONFIG.parent.parent / "README.rst").read_text()
    indented = "\n".join(f"    {line}" if line.strip() else "" for line in HAPROXY_CONFIG.read_text().splitlines())
    assert indented in readme
