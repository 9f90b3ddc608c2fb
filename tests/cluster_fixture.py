"""
Several real C{twistd mcpgateway} processes sharing one session space
through a real C{redis-server}, for the cluster tests
(L{mcpgateway.cluster}).

Each gateway runs the example todo server (a stateful tool: what one call
adds, the next lists, so a call that reached another child shows), with
every child tagged so a test can count them.  Everything started is killed
on the way out.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import kill_tagged, tagged_processes
from .test_twistd import environment, free_port, http, twistd

__all__ = ["AUTH", "SECRET", "Gateway", "gateway_config", "start_gateway", "todo_service"]

AUTH = ("admin", "s3cret-cluster")
SECRET = "fleet-secret-0123456789abcdef"
START_TIMEOUT = 30.0


def todo_service() -> dict[str, Any]:
    """
    @return: The C{todo} service entry (the example server).
    """
    return {"command": [sys.executable, "-m", "mcpgateway.examples.todo_server"], "description": "todos"}


def gateway_config(
    directory: Path,
    port: int,
    redis_uri: str,
    tag: str,
    *,
    workers: int = 1,
    services: dict[str, Any] | None = None,
    drain_timeout: float = 1,
    session: dict[str, Any] | None = None,
    **cluster: Any,
) -> Path:
    """
    Write a gateway's configuration into C{directory}: the C{todo} service and C{services}.

    @param drain_timeout: C{session.drain_timeout}: how long a stop waits for live sessions.
    @param session: More keys of the C{session} section.

    @return: Its path.
    """
    entries = {"todo": todo_service(), **(services or {})}
    for entry in entries.values():
        entry["env"] = {**entry.get("env", {}), "MCPGATEWAY_TEST_TAG": tag}
    config = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "auth_user": AUTH[0],
            "auth_password": AUTH[1],
            "workers": workers,
            "state_dir": str(directory / "state"),
        },
        "services": entries,
        # A stop drains live sessions for drain_timeout first (mcpgateway.drain).
        "session": {
            "sandbox_dir": str(directory / "sandbox"),
            "cleanup_interval": 1,
            "drain_timeout": drain_timeout,
            **(session or {}),
        },
        "rate_limiting": {"enabled": False},
        "audit": {"enabled": False},
        "cluster": {"redis": redis_uri, "secret": SECRET, "entry_ttl": 5, **cluster},
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps(config))
    return path


class Gateway:
    """
    A running gateway process.

    @ivar url: Its public URL.
    @ivar tag: The tag of its children.
    """

    def __init__(self, process: subprocess.Popen[bytes], output: Path, url: str, tag: str) -> None:
        self.process = process
        self.output = output
        self.url = url
        self.tag = tag

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def call(self, session: str, tool: str, **arguments: Any) -> tuple[int, Any]:
        body = {"tool": tool, "session_id": session, "arguments": arguments}
        return http("POST", f"{self.url}/services/todo/call", body, AUTH)

    def internal_address(self) -> str:
        """
        @return: Its internal address, as its log announced it.
        """
        for line in self.text().splitlines():
            if "forwarded calls reach this process" in line:
                return line.rsplit(" at ", 1)[1].strip()
        raise AssertionError("no internal address in the log")

    def children(self) -> list[int]:
        return tagged_processes(self.tag)

    def kill(self) -> None:
        """
        SIGKILL the gateway (its children follow: PR_SET_PDEATHSIG).
        """
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int:
        """
        SIGTERM, and wait for the exit.

        @return: The exit status.
        """
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def wait_healthy(url: str, process: subprocess.Popen[bytes], output: Path, timeout: float = START_TIMEOUT) -> None:
    """
    Wait until C{url}/health answers 200.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"the gateway exited with {process.returncode}:\n{output.read_text(errors='replace')}")
        try:
            status, _ = http("GET", url + "/health", timeout=2)
        except OSError:
            status = 0
        if status == 200:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"no /health within {timeout} s:\n{output.read_text(errors='replace')}")
        time.sleep(0.05)


@contextlib.contextmanager
def start_gateway(config: Path, port: int, tag: str, *extra: str) -> Iterator[Gateway]:
    """
    Run C{twistd -n mcpgateway --config CONFIG} until the block ends, then
    stop it (SIGKILL if it is still there) and every process tagged C{tag}.
    """
    output = config.parent / f"twistd-{uuid.uuid4().hex[:6]}.log"
    env = environment(tag=None)
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [*twistd(), "-n", "--pidfile=", "mcpgateway", "--config", str(config), *extra],
            cwd=config.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    gateway = Gateway(process, output, f"http://127.0.0.1:{port}", tag)
    try:
        wait_healthy(gateway.url, process, output)
        yield gateway
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        # Workers of a killed supervisor follow it (PR_SET_PDEATHSIG); make sure.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        kill_tagged(tag)


def ports(count: int) -> list[int]:
    """
    @return: C{count} distinct free loopback ports.
    """
    found: set[int] = set()
    while len(found) < count:
        found.add(free_port())
    return sorted(found)
