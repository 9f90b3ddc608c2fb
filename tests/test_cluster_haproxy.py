"""
Across hosts: real HAProxy (the shipped C{config/haproxy.cfg}, as it is) in
front of three real C{twistd mcpgateway} processes on loopback ports, which
share their sessions through a real C{redis-server}.

Round robin spreads every call anywhere; each session's calls still reach
its one child (the todo server keeps what the earlier calls added).  A
SIGKILLed gateway fails only its own sessions, with 503 C{session_lost},
and their directory entries are removed; the other gateways keep serving.
A rolling restart (SIGTERM, drain, start again, one gateway after the
other) loses no call while clients keep calling.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcpgateway.cluster.directory import address_of

from .cluster_fixture import AUTH, Gateway, gateway_config, ports, start_gateway
from .conftest import kill_tagged, require_binary, tagged_processes
from .redis_fixture import RedisServer, redis_server_at
from .test_cluster import MCP_ACCEPT, MCP_INITIALIZE, request
from .test_twistd import environment, http

#: Third-party programs end to end: run once, in tox's e2e env (not per Python).
pytestmark = pytest.mark.e2e

HAPROXY_CONFIG = Path(__file__).resolve().parent.parent / "config" / "haproxy.cfg"
SESSIONS = 24
CALLS = 3
#: The rolling restart: clients calling at once, calls before a session ends
#: by itself (so new sessions keep starting), each gateway's drain_timeout.
CLIENTS = 8
CALLS_PER_SESSION = 20
DRAIN_TIMEOUT = 20.0  # headroom on a loaded CI machine; a drained gateway exits at once anyway


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
    @return: session id -> owner address (without its incarnation), from the directory.
    """
    client = server.client()
    prefix = "mcpgateway:session:"
    return {
        key.decode()[len(prefix) :]: address_of((client.get(key) or b"").decode())
        for key in client.scan_iter(match=prefix + "*")
    }


def forwarded(gateways: list[Gateway]) -> int:
    """
    @return: The requests C{gateways} forwarded to another gateway so far (their C{/metrics}).
    """
    total = 0.0
    for gateway in gateways:
        status, _, raw = request("GET", gateway.url + "/metrics")
        assert status == 200, raw
        for line in raw.decode().splitlines():
            if line.startswith('mcpgateway_forwards_total{outcome="answered"}'):
                total += float(line.split()[-1])
    return int(total)


def test_haproxy_three_gateways_and_one_killed(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    gateway_ports = ports(3)
    (front,) = [p for p in ports(4) if p not in gateway_ports][:1]
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server_at(tmp_path))
        # entry_ttl: the dead gateway's entries must outlast the calls that find them.
        gateways = [
            stack.enter_context(
                start_gateway(gateway_config(tmp_path / f"gw{i}", port, redis.uri, tag, entry_ttl=60), port, tag)
            )
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

        # Sessions spread over the three gateways, and HAProxy sent each
        # session's calls to its owner (a hash of its id): none was forwarded.
        placed = owners(redis)
        assert sorted(placed) == sorted(sessions)
        addresses = {gateway.internal_address(): gateway for gateway in gateways}
        spread = Counter(placed.values())
        assert set(spread) == set(addresses), spread
        assert forwarded(gateways) == 0

        # An MCP session too: HAProxy learns its id from the answer that minted it.
        mcp = dict(MCP_ACCEPT)
        status, headers, raw = request("POST", url + "/mcp", MCP_INITIALIZE, mcp)
        assert status == 200, raw
        [minted] = [value for name, value in headers.items() if name.lower() == "mcp-session-id"]  # HAProxy: lower case
        mcp |= {"Mcp-Session-Id": minted, "MCP-Protocol-Version": "2025-06-18"}
        request("POST", url + "/mcp", {"jsonrpc": "2.0", "method": "notifications/initialized"}, mcp)
        for index in range(6):
            listing = {"jsonrpc": "2.0", "id": 2 + index, "method": "tools/list"}
            status, _, raw = request("POST", url + "/mcp", listing, mcp)
            assert status == 200 and b"todo.add_todo" in raw, raw
        assert forwarded(gateways) == 0
        assert request("DELETE", url + "/mcp", None, mcp)[0] == 200

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


def post(
    url: str, body: dict[str, Any], method: str = "POST", auth: tuple[str, str] = AUTH
) -> tuple[int, Any, str | None]:
    """
    One request, with the fleet's credentials unless told others.

    @return: C{(status, decoded JSON body, Retry-After header)}.
    """
    assert url.startswith("http://127.0.0.1:"), url
    request = urllib.request.Request(  # noqa: S310 (checked above)
        url,
        data=json.dumps(body).encode() if body else None,
        headers={"Content-Type": "application/json"},
        method=method,
    )
    request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310
            return response.status, json.loads(response.read()), response.headers.get("Retry-After")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read()), error.headers.get("Retry-After")


class Client(threading.Thread):
    """
    A client like the SignalWire skill: one session after the other, each
    adding todos through HAProxy until it has made L{CALLS_PER_SESSION} calls
    (unless told to hold it) or is told to end, then listing them (every call reached its child) and
    closing it.  A 5xx is re-sent after its C{Retry-After}; the only one
    expected is 503 C{draining} on a new session's first call whose gateway
    began to drain between claiming and opening it (rare: a draining gateway
    passes new sessions on to the others).

    @ivar calls: C{(session, monotonic time, status)} of every call.
    @ivar failures: What went wrong (empty when all is well).
    @ivar retried: How many new sessions were refused C{draining} and re-sent.
    @ivar ended: The sessions closed.
    """

    def __init__(self, url: str, name: str, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.url = url
        self.stop = stop
        self.holding: set[str] = set()
        self.ending: set[str] = set()
        self.ended: set[str] = set()
        self.calls: list[tuple[str, float, int]] = []
        self.failures: list[Any] = []
        self.retried = 0
        #: What it is doing now and since when (for a failure's message).
        self.doing: tuple[str, float] = ("starting", time.monotonic())

    def post(self, what: str, url: str, body: dict[str, Any], method: str = "POST") -> tuple[int, Any, str | None]:
        self.doing = (what, time.monotonic())
        try:
            return post(url, body, method)
        finally:
            self.doing = (f"after {what}", time.monotonic())

    def run(self) -> None:
        serial = 0
        while not self.stop.is_set() and not self.failures:
            session = f"{self.name}-{serial}"
            serial += 1
            try:
                self.session(session)
            except Exception as error:  # a refused or timed-out connection: a failure, said
                self.failures.append((session, "exception", repr(error)))

    def session(self, session: str) -> None:
        texts: list[str] = []
        while (
            (len(texts) < CALLS_PER_SESSION or session in self.holding)
            and session not in self.ending
            and not self.stop.is_set()
        ):
            text = f"{session} #{len(texts)}"
            body = {"tool": "add_todo", "session_id": session, "arguments": {"text": text}}
            status, answer, retry_after = self.post(f"add {text}", self.url + "/services/todo/call", body)
            self.calls.append((session, time.monotonic(), status))
            if status == 200:
                texts.append(text)
            elif not texts and status == 503 and answer.get("code") == "draining":
                if retry_after != "1":
                    self.failures.append((session, "Retry-After", retry_after))
                    return
                self.retried += 1
                time.sleep(float(retry_after))
                continue
            else:
                self.failures.append((session, len(texts), status, answer))
                return
            time.sleep(0.05)
        if not texts:  # told to end before its first call was served: it has nothing to lose
            self.ended.add(session)
            return
        status, answer, _ = self.post(
            f"list {session}", self.url + "/services/todo/call", {"tool": "list_todos", "session_id": session}
        )
        if status != 200 or [todo["text"] for todo in answer["structured_content"]["todos"]] != texts:
            self.failures.append((session, "state", status, answer, texts))
            return
        status, answer, _ = self.post(f"close {session}", f"{self.url}/sessions/{session}", {}, method="DELETE")
        if status != 200:
            self.failures.append((session, "close", status, answer))
            return
        self.ended.add(session)


def wait_for(condition: Any, timeout: float, what: str, state: Any = None) -> float:
    """
    Poll C{condition} until it is true.

    @param state: Called for the failure message if it never is.

    @return: The monotonic time it became true.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}" + (f"; {state()}" if state else ""))
        time.sleep(0.05)
    return time.monotonic()


def wait_for_answer(ask: Any, status: int, timeout: float = 5) -> tuple[int, Any, str | None]:
    """
    Ask until the answer has C{status}.

    @return: That answer.
    """
    deadline = time.monotonic() + timeout
    while True:
        answer: tuple[int, Any, str | None] = ask()
        if answer[0] == status or time.monotonic() > deadline:
            return answer
        time.sleep(0.02)


def test_rolling_restart_loses_no_call(tmp_path: Path) -> None:
    """
    SIGTERM, drain, restart each of three gateways in turn while eight clients
    keep calling through HAProxy: no call of a session fails (a new session
    that reaches a draining gateway is passed on to another), every session
    keeps its state, calls of a draining gateway's sessions are forwarded to
    it once HAProxy takes it out, and nothing leaks.  (So is an MCP
    C{initialize}, sent straight to the draining gateway.)
    """
    tag = uuid.uuid4().hex
    gateway_ports = ports(3)
    (front,) = [p for p in ports(4) if p not in gateway_ports][:1]
    balancer_log = tmp_path / "haproxy.log"
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server_at(tmp_path))
        configs = [
            gateway_config(tmp_path / f"gw{i}", port, redis.uri, tag, drain_timeout=DRAIN_TIMEOUT)
            for i, port in enumerate(gateway_ports)
        ]
        gateways = [stack.enter_context(start_gateway(c, p, tag)) for c, p in zip(configs, gateway_ports, strict=True)]
        url = stack.enter_context(haproxy(front, gateway_ports, tmp_path))
        stop = threading.Event()
        clients = [Client(url, f"client{n}", stop) for n in range(CLIENTS)]
        for client in clients:
            client.start()
        try:
            started = time.monotonic()
            wait_for(lambda: len(set(owners(redis).values())) == 3, 20, "sessions on all three gateways")
            for index, port in enumerate(gateway_ports):
                server = f"Server gateways/gw{index + 1} is"
                downs, ups = (balancer_log.read_text().count(f"{server} {state}") for state in ("DOWN", "UP"))
                victim = gateways[index]
                address = victim.internal_address()

                def live_there(address: str = address) -> set[str]:
                    return {session for session, owner in owners(redis).items() if owner == address}

                # Sessions land where a hash of their id says: wait until it has
                # two, and keep them going (held) until HAProxy took it out.
                wait_for(lambda live_there=live_there: len(live_there()) >= 2, 20, f"two sessions on gw{index + 1}")
                held = live_there()
                for client in clients:
                    client.holding |= held
                time.sleep(0.2)
                assert held & live_there(), "the gateway to drain has live sessions (not closing already)"
                signalled = time.monotonic()
                victim.process.send_signal(signal.SIGTERM)
                # It takes no new session from now on: one that reaches it (through
                # HAProxy too, until its check fails) is passed on to another gateway.
                probe = {"tool": "add_todo", "session_id": f"probe-{index}", "arguments": {"text": "x"}}
                draining = wait_for_answer(lambda url=victim.url: post(url + "/health", {}, method="GET"), 503)
                assert draining[1]["status"] == "draining", draining
                passed = post(victim.url + "/services/todo/call", probe)
                assert passed[0] == 200, passed
                assert owners(redis)[f"probe-{index}"] not in ("", address), owners(redis)
                assert post(victim.url + f"/sessions/probe-{index}", {}, method="DELETE")[0] == 200
                # So is an MCP client's initialize (an MCP client does not re-send it).
                status, headers, raw = request("POST", victim.url + "/mcp", MCP_INITIALIZE, dict(MCP_ACCEPT))
                assert status == 200, raw
                [minted] = [value for name, value in headers.items() if name.lower() == "mcp-session-id"]
                assert owners(redis)[minted] not in ("", address), owners(redis)
                mcp = {**MCP_ACCEPT, "Mcp-Session-Id": minted, "MCP-Protocol-Version": "2025-06-18"}
                assert request("DELETE", victim.url + "/mcp", None, mcp)[0] == 200
                # Its live sessions go on until HAProxy took it out (then they end).
                out = wait_for(
                    lambda server=server, downs=downs: balancer_log.read_text().count(f"{server} DOWN") > downs,
                    10,
                    f"HAProxy takes gw{index + 1} out",
                )
                time.sleep(0.5)  # calls of its sessions now land elsewhere and are forwarded to it
                doomed = held | live_there()
                for client in clients:
                    client.ending |= doomed
                wait_for(
                    lambda doomed=doomed: all(
                        c.ended >= {s for s in doomed if s.startswith(c.name + "-")} or c.failures for c in clients
                    ),
                    DRAIN_TIMEOUT - (time.monotonic() - signalled) - 1,
                    f"gw{index + 1}'s sessions end before its drain deadline",
                    lambda doomed=doomed: [
                        (
                            c.name,
                            c.is_alive(),
                            c.failures,
                            c.doing[0],
                            round(time.monotonic() - c.doing[1], 2),
                            sorted(s for s in doomed if s.startswith(c.name + "-") and s not in c.ended),
                        )
                        for c in clients
                    ],
                )
                # Served while draining, also when HAProxy sent them to another gateway.
                forwarded = [
                    status for c in clients for session, at, status in c.calls if session in doomed and at > out
                ]
                assert forwarded and set(forwarded) == {200}, (
                    index,
                    sorted(doomed),
                    [(s, round(at - out, 2), st) for c in clients for s, at, st in c.calls if s in doomed],
                )
                wait_for(
                    lambda doomed=doomed: not doomed & set(owners(redis)), 5, "closed sessions leave the directory"
                )
                # No session left: it exits at once, before its deadline.
                assert victim.process.wait(timeout=DRAIN_TIMEOUT) == -signal.SIGTERM
                assert time.monotonic() - signalled < DRAIN_TIMEOUT
                assert address not in set(owners(redis).values())
                gateways[index] = stack.enter_context(start_gateway(configs[index], port, tag))
                wait_for(
                    lambda server=server, ups=ups: balancer_log.read_text().count(f"{server} UP") > ups,
                    15,
                    f"HAProxy takes gw{index + 1} back",
                )
                fresh = gateways[index].internal_address()
                wait_for(
                    lambda fresh=fresh: fresh in set(owners(redis).values()),
                    10,
                    f"new sessions on the new gw{index + 1}",
                )
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            for client in clients:
                client.join(timeout=30)
        failures = [failure for client in clients for failure in client.failures]
        assert failures == []
        calls = sum(len(client.calls) for client in clients)
        retried = sum(client.retried for client in clients)
        # Every session ended: the directory is empty, no child is left.
        wait_for(lambda: owners(redis) == {}, 5, "closed sessions leave the directory")
        wait_for(lambda: not tagged_processes(tag), 5, "the children of closed sessions exit")
        for gateway in gateways:
            assert gateway.stop() == -signal.SIGTERM
        print(f"rolling restart: {elapsed:.1f} s, {calls} calls, {retried} new sessions re-sent after draining")
    leaked = tagged_processes(tag)
    kill_tagged(tag)
    assert leaked == []


def test_readme_shows_the_tested_haproxy_config() -> None:
    readme = (HAPROXY_CONFIG.parent.parent / "README.rst").read_text()
    indented = "\n".join(f"    {line}" if line.strip() else "" for line in HAPROXY_CONFIG.read_text().splitlines())
    assert indented in readme
