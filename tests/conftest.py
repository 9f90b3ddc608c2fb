"""
Shared fixtures: a real gateway on a real socket with real children, a
process census that fails a test which leaks a child, and a reactor fixture
that fails a test on any logged failure (pytest-twisted does not, trial does).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

import mcpgateway.policy.auth
from mcpgateway.config import parse_config
from mcpgateway.gateway import Gateway
from mcpgateway.http.rest import GatewayApp
from mcpgateway.policy.ratelimit import RateLimiter
from mcpgateway.runtime import make_authenticator, make_site

HERE = Path(__file__).parent
SERVERS = HERE / "servers"
FIXTURE_SERVER = str(SERVERS / "fixture_server.py")
SDK_SERVER = str(SERVERS / "sdk_server.py")
PYTHON = sys.executable
USER, PASSWORD = "tester", "0123456789"  # a digit-only password must stay a string
AUTH = (USER, PASSWORD)


# -- ports -----------------------------------------------------------------------

#: Where L{free_port} looks: below the kernel's ephemeral ports (32768-60999
#: by default), which it hands to every C{bind} to port 0 and to every
#: outgoing connection, of this run and of the tox envs running beside it.
#: A port chosen there could be taken between the probe and the server's own
#: bind (a gateway spends a second importing first); a random one here can
#: only meet another test's random choice.
_PORTS = range(20000, 32768)
_chooser = random.Random()
_handed_out: set[int] = set()


def _ephemeral() -> range:
    try:
        low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return range(32768, 61000)
    return range(low, high + 1)


def free_port() -> int:
    """
    @return: A loopback TCP port nothing listens on now, picked at random
        outside the kernel's ephemeral range (if it leaves room), and not
        handed out before in this process.
    """
    ephemeral = _ephemeral()
    candidates = [_PORTS] if _PORTS.stop <= ephemeral.start or _PORTS.start >= ephemeral.stop else []
    for _ in range(200):
        if candidates:
            port = _chooser.choice(candidates[0])
            if port in _handed_out:
                continue
        else:
            port = 0
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(probe.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port found")


# -- processes -------------------------------------------------------------------


def tagged_processes(tag: str) -> list[int]:
    """
    @param tag: A value of C{MCPGATEWAY_TEST_TAG}.
    @return: Live (non-zombie) processes whose environment carries it,
        grandchildren included, wherever they were reparented.
    """
    found = []
    needle = f"MCPGATEWAY_TEST_TAG={tag}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()
            with open(f"/proc/{entry}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ.split(b"\0") and state != b"Z":
            found.append(int(entry))
    return found


def kill_tagged(tag: str) -> None:
    """
    Clean up after a failed leak check so one failure does not cascade.
    """
    for pid in tagged_processes(tag):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> None:
    """
    Poll C{predicate} on the reactor (without blocking it) until it holds.

    @raise AssertionError: If it does not within C{timeout} seconds.
    """
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"condition not reached within {timeout} s")
        await deferLater(reactor, step, lambda: None)
        waited += step


def sleep(seconds: float) -> Deferred[None]:
    """
    @return: Fires after C{seconds} on the reactor.
    """
    return deferLater(reactor, seconds, lambda: None)


# -- logged failures -------------------------------------------------------------


def pytest_collection_finish(session: pytest.Session) -> None:
    """
    Move everything the imports and the collection made out of the
    collector's reach (C{gc.freeze}): the full collection after each test
    (L{fail_on_logged_failures}) then walks only what tests made, in
    milliseconds rather than a quarter of a second per test.
    """
    import gc

    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def fail_on_logged_failures() -> Iterator[list[dict[str, Any]]]:
    """
    Fail the test if anything logged a failure (an unhandled error in a
    Deferred, a route that blew up), as trial does.
    """
    failures: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    yield failures
    import gc

    gc.collect()  # unhandled errors in garbage Deferreds are logged on collection
    globalLogPublisher.removeObserver(observe)
    if failures:
        messages = [str(event["log_failure"].getTraceback()) for event in failures]
        pytest.fail("logged failures:\n" + "\n".join(messages))


# -- gateways ----------------------------------------------------------------------


def fixture_service(*flags: str, **settings: Any) -> dict[str, Any]:
    """
    @return: A service entry running C{tests/servers/fixture_server.py} with C{flags}.
    """
    return {"command": [PYTHON, FIXTURE_SERVER, *flags], "description": "test fixture", **settings}


class LiveGateway:
    """
    A gateway listening on 127.0.0.1 with real children, and a treq client for it.

    @ivar url: Its base URL.
    @ivar gateway: The L{Gateway} object.
    @ivar tag: The C{MCPGATEWAY_TEST_TAG} in every child's environment.
    """

    def __init__(self, gateway: Gateway, url: str, tag: str, port: Any) -> None:
        self.gateway = gateway
        self.url = url
        self.tag = tag
        self.port = port
        #: The L{GatewayApp} it serves.
        self.app: Any = None

    def children(self) -> list[int]:
        """
        @return: Live processes started for this gateway (grandchildren too).
        """
        return tagged_processes(self.tag)

    async def request(self, method: str, path: str, body: Any = None, auth: Any = AUTH, **kw: Any) -> Any:
        """
        Send a request; returns C{(response, decoded JSON body)}.
        """
        if body is not None:
            kw.setdefault("data", json.dumps(body).encode())
            kw.setdefault("headers", {b"Content-Type": [b"application/json"]})
        response = await treq.request(method, self.url + path, auth=auth, **kw)
        raw = await treq.content(response)
        try:
            decoded = json.loads(raw)
        except ValueError:
            decoded = raw
        return response, decoded

    async def call(self, service: str, tool: str, session: str, arguments: Any = None, **extra: Any) -> Any:
        """
        C{POST /services/<service>/call}; returns C{(response, body)}.
        """
        body = {"tool": tool, "session_id": session, "arguments": arguments or {}, **extra}
        return await self.request("POST", f"/services/{service}/call", body)


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bytes]]:
    """
    @return: The password hashes the gateway verifies, as C{(hash, password)}
        pairs, appended as it verifies them (for real).
    """
    verified: list[tuple[str, bytes]] = []
    real = mcpgateway.policy.auth._verify_password

    def counting(encoded: str, password: bytes) -> bool:
        verified.append((encoded, password))
        return real(encoded, password)

    monkeypatch.setattr(mcpgateway.policy.auth, "_verify_password", counting)
    return verified


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """
    Build a raw configuration for the given services (children tagged).
    """

    def build(services: dict[str, dict[str, Any]], **sections: Any) -> dict[str, Any]:
        tag = uuid.uuid4().hex
        tagged = {}
        for name, entry in services.items():
            entry = dict(entry)
            if "url" not in entry:  # a url service runs no process (and takes no env)
                entry["env"] = {**entry.get("env", {}), "MCPGATEWAY_TEST_TAG": tag}
            tagged[name] = entry
        session = {"sandbox_dir": str(tmp_path / "sandbox"), **sections.pop("session", {})}
        server = {"auth_user": USER, "auth_password": PASSWORD, **sections.pop("server", {})}
        return {"server": server, "services": tagged, "session": session, **sections}

    return build


@pytest_twisted.async_yield_fixture
async def live(make_config: Callable[..., dict[str, Any]]) -> AsyncIterator[Callable[..., Any]]:
    """
    Start gateways on real sockets; on teardown stop them and check that
    every child (and grandchild) is gone.
    """
    started: list[LiveGateway] = []

    def start(
        services: dict[str, dict[str, Any]], app_options: dict[str, Any] | None = None, **sections: Any
    ) -> LiveGateway:
        raw = make_config(services, **sections)
        tags = [entry["env"]["MCPGATEWAY_TEST_TAG"] for entry in raw["services"].values() if "env" in entry]
        tag = tags[0] if tags else uuid.uuid4().hex
        config = parse_config(raw)
        gateway = Gateway(config, reactor, reactor)
        limiter = RateLimiter(config.rate_limiting)
        app = GatewayApp(gateway, make_authenticator(config.server, reactor), limiter, **(app_options or {}))
        site = make_site(app, config)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        gateway.start()
        running = LiveGateway(gateway, f"http://127.0.0.1:{port.getHost().port}", tag, port)
        running.app = app
        started.append(running)
        return running

    yield start
    for running in started:
        await running.port.stopListening()
        tokens = running.app.guard.authenticator.tokens
        if tokens is not None:
            tokens.stop()
        await running.gateway.stop()
        try:
            await wait_until(lambda running=running: not running.children(), timeout=5)
        except AssertionError:
            leaked = running.children()
            kill_tagged(running.tag)
            pytest.fail(f"child processes leaked: {leaked}")


# -- skips are failures in CI ------------------------------------------------------

REQUIRE_ALL = bool(os.environ.get("MCPGATEWAY_REQUIRE_ALL"))


def require_binary(name: str) -> str:
    """
    @param name: An executable the test needs.
    @return: Its path; skips the test when absent (fails it under C{MCPGATEWAY_REQUIRE_ALL}).
    """
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """
    Under C{MCPGATEWAY_REQUIRE_ALL=1} (set by C{.ci/run}) a skipped test fails.
    """
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run everything: {report.longrepr}"
