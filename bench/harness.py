"""
What every measurement of the benchmark shares: its constants, its progress
lines and error, how much to measure (L{Profile}), and the gateway under test
(L{GatewayProcess}: a C{twistd} subprocess with a generated configuration on a
free 127.0.0.1 port), stopped with L{stop_and_sweep}, which also kills any
process the run started that is left behind.

bench/run.py and bench/profile.py both start their gateway from here.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from loadgen import Connection, build_request
from procfs import children_of, rss_kb, stat_fields

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
SERVICE = "todo"
TOOL = "list_todos"
USER = "bench"
PASSWORD = "bench-7f3a9c-password"
SESSION_TIMEOUT = 3600
LEGACY_VERSION = "2025-11-25"
TAG_VARIABLE = "MCPGATEWAY_BENCH_TAG"
TODO_COMMAND = (sys.executable, "-m", "mcpgateway.examples.todo_server")

_started = time.monotonic()


class BenchError(Exception):
    """
    The benchmark cannot go on (the gateway misbehaved or did not start).
    """


def say(message: str) -> None:
    """
    Print one progress line on stderr.

    @param message: What is happening.
    """
    print(f"[{elapsed():7.1f}s] {message}", file=sys.stderr, flush=True)


def elapsed() -> float:
    """
    @return: Seconds since the benchmark started (since this module was imported).
    """
    return time.monotonic() - _started


# -- profiles ---------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """
    How much to measure.

    @ivar name: C{"quick"} or C{"full"}.
    @ivar floor_calls: Timed direct stdio round trips.
    @ivar warm_calls: Timed warm calls per transport (and client self-cost requests).
    @ivar tools_calls: Timed cached C{GET /tools}.
    @ivar first_calls: Samples of a session's first call (and of a direct child start).
    @ivar deletes: Samples of C{DELETE} of one session at a time.
    @ivar duration: Seconds of each throughput run.
    @ivar levels: Concurrent sessions of the throughput rows.
    @ivar batch: Sessions opened per capacity batch.
    @ivar max_sessions: Where the capacity step stops.
    """

    name: str
    floor_calls: int
    warm_calls: int
    tools_calls: int
    first_calls: int
    deletes: int
    duration: float
    levels: tuple[int, ...]
    batch: int
    max_sessions: int


FULL = Profile("full", 20000, 10000, 2000, 20, 100, 5.0, (1, 8, 64), 100, 1000)
QUICK = Profile("quick", 3000, 2000, 500, 10, 30, 2.0, (1, 8, 64), 50, 200)


# -- the gateway ---------------------------------------------------------------------------


def free_port() -> int:
    """
    @return: A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class GatewayProcess:
    """
    A gateway run as C{twistd -n mcpgateway --config ...} in a subprocess.

    @ivar pid: Its process id.
    @ivar port: Its port on 127.0.0.1.
    @ivar log_path: Its output: the twistd log.
    @ivar exit_code: How it exited, once stopped.
    """

    def __init__(self, workdir: Path, env: dict[str, str], max_sessions: int, prewarm: int = 0) -> None:
        """
        @param workdir: Where the configuration, log and sandbox go.
        @param env: Its environment (its children inherit it).
        @param max_sessions: Sessions the capacity step will hold (limits are set above it).
        @param prewarm: The service's warm pool size.
        """
        self.workdir = workdir
        self.env = env
        self.port = free_port()
        self.log_path = workdir / "twistd.out"
        self.config_path = workdir / "config.json"
        limit = max_sessions + 100
        config = {
            "server": {"host": HOST, "port": self.port, "auth_user": USER, "auth_password": PASSWORD},
            "services": {
                SERVICE: {
                    "command": ["${MCPGATEWAY_PYTHON}", "-m", "mcpgateway.examples.todo_server"],
                    "prewarm": prewarm,
                }
            },
            "session": {
                "default_timeout": SESSION_TIMEOUT,
                "max_sessions_per_service": limit,
                "max_total_sessions": limit,
                "cleanup_interval": 60,
                "sandbox_dir": str(workdir / "sandbox"),
                # Stopped with its sessions live: no graceful drain to wait for.
                "drain_timeout": 0,
            },
            # The recommended setting at high call rates: access lines buffered
            # to their own file (see README, logging.access_log).
            "logging": {"level": "INFO", "access_log": str(workdir / "access.jsonl")},
            # Limits stay on (their cost is part of every call) but high enough
            # that the benchmark's own load is never refused.
            "rate_limiting": {
                "call_limit": "100000000 per minute",
                "tools_limit": "100000000 per minute",
                "session_delete_limit": "100000000 per minute",
                "default_limits": ["100000000 per minute"],
            },
        }
        self.config_path.write_text(json.dumps(config, indent=2))
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        self.authorization = f"Basic {token}"
        self.host_header = f"{HOST}:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.exit_code: int | None = None
        self._output: IO[bytes] | None = None

    def command(self) -> list[str]:
        """
        @return: The twistd command line (the venv's C{twistd}, else the same via C{-c}).
        """
        twistd = shutil.which("twistd", path=str(Path(sys.executable).parent))
        head = [twistd] if twistd else [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        return [
            *head,
            "-n",
            "--pidfile=",
            "mcpgateway",
            "--config",
            str(self.config_path),
        ]

    def start(self, timeout: float = 30.0) -> None:
        """
        Start it and wait until C{GET /health} answers 200.

        @raise BenchError: If it exits or does not answer in time.
        """
        self._output = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.command(), stdout=self._output, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir
        )
        self.pid = self.process.pid
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"the gateway exited with status {self.process.returncode}:\n{self.log_tail()}")
            try:
                connection = Connection(HOST, self.port, timeout=2)
            except OSError:
                time.sleep(0.05)
                continue
            try:
                if connection.request(self.request("GET", "/health")).status == 200:
                    return
            finally:
                connection.close()
        raise BenchError(f"the gateway did not answer /health within {timeout:g} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """
        SIGTERM, wait; SIGKILL if it does not exit in time.  Safe to call twice.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                say(f"the gateway ignored SIGTERM for {timeout:g} s: SIGKILL")
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process is not None:
            self.exit_code = self.process.returncode
        if self._output is not None:
            self._output.close()
            self._output = None

    def log_tail(self, lines: int = 20) -> str:
        """
        @return: The end of its log and output.
        """
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def connect(self) -> Connection:
        """
        @return: A new keep-alive connection to it.
        """
        return Connection(HOST, self.port)

    def request(self, method: str, path: str, body: Any = None) -> bytes:
        """
        @param body: A JSON-able body, or L{None}.
        @return: An authenticated request.
        """
        headers = [("Authorization", self.authorization)]
        data = b""
        if body is not None:
            headers.append(("Content-Type", "application/json"))
            data = json.dumps(body, separators=(",", ":")).encode()
        return build_request(method, path, self.host_header, headers, data)

    def call_request(self, session_id: str) -> bytes:
        """
        @return: C{POST /services/todo/call} of C{list_todos} in C{session_id}.
        """
        body = {"tool": TOOL, "session_id": session_id, "arguments": {}, "timeout": SESSION_TIMEOUT}
        return self.request("POST", f"/services/{SERVICE}/call", body)

    def delete_request(self, session_id: str) -> bytes:
        """
        @return: C{DELETE /sessions/<session_id>}.
        """
        return self.request("DELETE", f"/sessions/{session_id}")

    def rss_kb(self) -> int:
        """
        @return: Its VmRSS, in KiB.
        """
        return rss_kb(self.pid)

    def children(self) -> list[int]:
        """
        @return: Its live child processes.
        """
        return children_of(self.pid)


# -- what the run left behind ------------------------------------------------------------


def tagged_processes(tag: str, exclude: int | None = None) -> list[int]:
    """
    @param tag: The value of C{MCPGATEWAY_BENCH_TAG} this run put in every environment.
    @param exclude: A process id not to report (the gateway itself).
    @return: Live processes carrying it, wherever they were reparented.
    """
    needle = f"{TAG_VARIABLE}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (exclude, os.getpid()):
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
        except OSError:
            continue
        fields = stat_fields(int(entry))
        if needle in environ and fields and fields[0] != b"Z":
            found.append(int(entry))
    return found


def stop_and_sweep(gateway: GatewayProcess, tag: str) -> list[int]:
    """
    Stop the gateway (SIGTERM, wait), then find and kill anything the run
    started that is still alive.

    @param gateway: The gateway (started or not).
    @param tag: The value of L{TAG_VARIABLE} in every environment of the run.
    @return: The processes that were left behind (killed now).
    """
    gateway.stop()
    deadline = time.perf_counter() + 5
    while (leftover := tagged_processes(tag, exclude=gateway.pid)) and time.perf_counter() < deadline:
        time.sleep(0.1)
    for pid in leftover:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return leftover
