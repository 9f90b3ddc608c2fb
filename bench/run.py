"""
The mcpgateway benchmark suite.

Run it with the interpreter the gateway is installed in::

    python bench/run.py [--quick] [--out bench/results] [--max-sessions N]

One run starts its own gateway (a C{twistd} subprocess with a generated
configuration in a temporary directory, on a free 127.0.0.1 port) and
measures, against the example todo server:

  1. the floor: a direct stdio round trip to the todo server;
  2. a warm tool call through each gateway transport (one session, one
     keep-alive connection) and its overhead over the floor;
  3. throughput at 1, 8 and 64 concurrent sessions, with this client and,
     if it is installed, with C{wrk} (bench/call.lua);
  4. a session's first call against the child's own start time;
  5. C{DELETE /sessions/<id>} and cached C{GET /services/<name>/tools};
  6. gateway and children memory per session, and a capacity step up to
     C{--max-sessions} live sessions, torn down again.

The load generator (bench/loadgen.py) is timed against an in-process canned
HTTP server so its own cost can be read next to the gateway's.  The results
are printed as tables, written to C{OUT/results.json}, and plotted to
C{OUT/latency.png} (if matplotlib is installed).  The gateway is always
stopped, and the run checks that no process it started is left behind.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from loadgen import CannedServer, Connection, Response, build_request, drive, until

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
SERVICE = "todo"
WARM_POOL = 2  # prewarm of the warm-pool gateway
TOOL = "list_todos"
USER = "bench"
PASSWORD = "bench-7f3a9c-password"
SESSION_TIMEOUT = 3600
LEGACY_VERSION = "2025-11-25"
TAG_VARIABLE = "MCPGATEWAY_BENCH_TAG"
TODO_COMMAND = (sys.executable, "-m", "mcpgateway.examples.todo_server")
OPEN_CONCURRENCY = 8
WARMUP_CALLS = 200

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
    print(f"[{time.monotonic() - _started:7.1f}s] {message}", file=sys.stderr, flush=True)


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


# -- statistics ---------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """
    A latency distribution, in milliseconds.
    """

    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        """
        @param seconds: Samples in seconds (at least one).
        @return: Their nearest-rank percentiles, in milliseconds.
        """
        ordered = sorted(seconds)
        n = len(ordered)

        def rank(p: float) -> float:
            return ordered[max(0, math.ceil(p / 100 * n) - 1)] * 1000

        return cls(n, rank(50), rank(90), rank(99), sum(ordered) / n * 1000, ordered[-1] * 1000)

    def get(self, percentile: str) -> float:
        """
        @param percentile: C{"p50"}, C{"p90"} or C{"p99"}.
        @return: That percentile.
        """
        return float(getattr(self, percentile))


class Tally:
    """
    Every response the benchmark received, by status, and what was wrong
    with the ones that were not the expected answer.
    """

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.bad: Counter[str] = Counter()
        self.examples: list[str] = []

    def count(self, where: str, response: Response, ok: bool) -> bool:
        """
        @param where: Which measurement received it.
        @param response: The response.
        @param ok: Whether it was the expected answer.
        @return: C{ok}.
        """
        self.statuses[response.status] += 1
        if not ok:
            self.bad[where] += 1
            if len(self.examples) < 10:
                self.examples.append(f"{where}: HTTP {response.status} {response.body[:300]!r}")
        return ok

    def as_dict(self) -> dict[str, Any]:
        """
        @return: The JSON view.
        """
        return {
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "unexpected": dict(self.bad),
            "examples": self.examples,
        }


# -- processes, from /proc ------------------------------------------------------------


def _stat_fields(pid: int) -> list[bytes] | None:
    """
    @return: The fields of C{/proc/<pid>/stat} after the command name
        (state is [0], ppid [1], utime [11], stime [12]), or L{None}.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children_of(parent: int) -> list[int]:
    """
    @param parent: A process id.
    @return: Its live (not zombie) child processes.
    """
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and int(fields[1]) == parent and fields[0] != b"Z":
                found.append(int(entry))
    return found


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
        fields = _stat_fields(int(entry))
        if needle in environ and fields and fields[0] != b"Z":
            found.append(int(entry))
    return found


def _status_kb(pid: int, key: bytes, name: str = "status") -> int | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_kb(pid: int) -> int:
    """
    @return: The process's resident set size (VmRSS), in KiB; 0 if it is gone.
    """
    return _status_kb(pid, b"VmRSS:") or 0


def pss_kb(pid: int) -> int | None:
    """
    @return: Its proportional set size (shared pages divided among sharers), in KiB.
    """
    return _status_kb(pid, b"Pss:", "smaps_rollup")


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float:
    """
    @param pids: Processes.
    @return: The user plus system CPU time they used so far (gone ones count 0).
    """
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def wait_for_children(parent: int, count: int, timeout: float) -> tuple[bool, float]:
    """
    Poll until C{parent} has at most C{count} live children.

    @return: Whether it happened, and after how many seconds.
    """
    start = time.perf_counter()
    deadline = start + timeout
    while len(children_of(parent)) > count:
        if time.perf_counter() > deadline:
            return False, time.perf_counter() - start
        time.sleep(0.05)
    return True, time.perf_counter() - start


# -- the todo server, directly ------------------------------------------------------------


class DirectChild:
    """
    The todo server spawned by the benchmark itself and spoken to over its
    pipes, the way the gateway speaks to its children: the floor.
    """

    def __init__(self, env: dict[str, str], cwd: str) -> None:
        """
        Spawn it and complete the legacy handshake (C{initialize}, then
        C{notifications/initialized}).

        @param env: Its environment.
        @param cwd: Its working directory.
        """
        self.process = subprocess.Popen(
            TODO_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=cwd
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._stdin = self.process.stdin.fileno()
        self._readline = self.process.stdout.readline
        self._next_id = 0
        answer = self.rpc(
            "initialize",
            {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
        )
        if b'"result"' not in answer:
            raise BenchError(f"the todo server refused initialize: {answer!r}")
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, message: dict[str, Any]) -> None:
        """
        @param message: One JSON-RPC message, written as one line.
        """
        os.write(self._stdin, json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def rpc(self, method: str, params: dict[str, Any]) -> bytes:
        """
        @return: The answer line to a request.
        """
        self._next_id += 1
        self.send({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params})
        line: bytes = self._readline()
        if not line:
            raise BenchError("the todo server exited")
        return line

    def close(self) -> None:
        """
        Close its stdin (it exits at end of input) and reap it.
        """
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        assert self.process.stdout is not None
        self.process.stdout.close()


def time_child_start(env: dict[str, str], cwd: str) -> float:
    """
    @return: Seconds to spawn the todo server and complete its handshake.
    """
    start = time.perf_counter()
    child = DirectChild(env, cwd)
    elapsed = time.perf_counter() - start
    child.close()
    return elapsed


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


# -- transports ------------------------------------------------------------------------------


def _rest_ok(response: Response) -> bool:
    body = response.body
    return response.status == 200 and b'"is_error":false' in body and b'"session_restarted":false' in body


def _rest_prepare(gateway: GatewayProcess, connection: Connection, session_id: str, tally: Tally) -> bytes:
    request = gateway.call_request(session_id)
    response = connection.request(request)  # the session's first call spawns its child
    if not tally.count("first call", response, _rest_ok(response)):
        raise BenchError(f"the first call of session {session_id} failed: {response.status} {response.body[:300]!r}")
    return request


def _rest_close(gateway: GatewayProcess, connection: Connection, session_id: str, tally: Tally) -> None:
    response = connection.request(gateway.delete_request(session_id))
    tally.count("DELETE", response, response.status == 200)


MCP_PATH = "/mcp"
MCP_TOOL = f"{SERVICE}.{TOOL}"  # the aggregate endpoint names tools <service>.<name>
MCP_CALL_ID = 2  # initialize is id 1; see _mcp_prepare
#: The Mcp-Session-Id the gateway minted for each of the benchmark's session names.
_mcp_sessions: dict[str, str] = {}


def _mcp_request(gateway: GatewayProcess, method: str, mcp_session: str | None, message: Any = None) -> bytes:
    """
    @param mcp_session: The C{Mcp-Session-Id}, or L{None} before C{initialize}.
    @param message: A JSON-RPC message (POST), or L{None}.
    @return: An authenticated legacy-era Streamable HTTP request to C{/mcp}.
    """
    headers = [("Authorization", gateway.authorization)]
    if mcp_session is not None:
        headers += [("Mcp-Session-Id", mcp_session), ("MCP-Protocol-Version", LEGACY_VERSION)]
    data = b""
    if message is not None:
        headers += [("Accept", "application/json, text/event-stream"), ("Content-Type", "application/json")]
        data = json.dumps(message, separators=(",", ":")).encode()
    return build_request(method, MCP_PATH, gateway.host_header, headers, data)


def _mcp_ok(response: Response) -> bool:
    body = response.body
    return (
        response.status == 200
        and response.header(b"content-type") == b"application/json"
        and body.startswith(b'{"jsonrpc":"2.0","id":%d,"result":' % MCP_CALL_ID)
        and b'"isError":false' in body
    )


def _mcp_prepare(gateway: GatewayProcess, connection: Connection, session_id: str, tally: Tally) -> bytes:
    """
    The legacy handshake on C{connection}: C{initialize} (the gateway mints the
    C{Mcp-Session-Id}, remembered under C{session_id}), C{notifications/initialized},
    then a first C{tools/call}, which spawns the session's child.

    @return: The C{tools/call} to repeat.  Its JSON-RPC id is always the same
        (one call at a time per session, so never two in flight); the gateway
        only keys requests in flight by id, and gives the child its own ids.
    """
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": LEGACY_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        },
    }
    response = connection.request(_mcp_request(gateway, "POST", None, initialize))
    minted = response.header(b"mcp-session-id")
    if not tally.count(
        "mcp initialize", response, response.status == 200 and b'"result"' in response.body and bool(minted)
    ):
        raise BenchError(f"initialize on {MCP_PATH} failed: {response.status} {response.body[:300]!r}")
    assert minted is not None
    mcp_session = _mcp_sessions[session_id] = minted.decode("latin-1")
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    response = connection.request(_mcp_request(gateway, "POST", mcp_session, initialized))
    if not tally.count("mcp initialized", response, response.status == 202):
        raise BenchError(f"notifications/initialized on {MCP_PATH}: {response.status} {response.body[:300]!r}")
    call = {"jsonrpc": "2.0", "id": MCP_CALL_ID, "method": "tools/call", "params": {"name": MCP_TOOL, "arguments": {}}}
    request = _mcp_request(gateway, "POST", mcp_session, call)
    response = connection.request(request)
    if not tally.count("mcp first call", response, _mcp_ok(response)):
        raise BenchError(f"the first tools/call of {mcp_session} failed: {response.status} {response.body[:300]!r}")
    return request


def _mcp_close(gateway: GatewayProcess, connection: Connection, session_id: str, tally: Tally) -> None:
    response = connection.request(_mcp_request(gateway, "DELETE", _mcp_sessions.pop(session_id)))
    tally.count("mcp DELETE", response, response.status == 200)


@dataclass(frozen=True)
class Transport:
    """
    One way to make a warm tool call through the gateway.  Each entry of
    L{TRANSPORTS} is a row of the latency and throughput tables, a bar group
    of the plot and a key of results.json.

    @ivar key: Its key in results.json.
    @ivar label: Its row label.
    @ivar prepare: Opens session C{session_id} on the connection (its first
        call, a handshake, ...) and returns the request to repeat as a warm call.
    @ivar ok: Whether a response is the expected answer.
    @ivar close: Ends the session.
    @ivar wrk_script: A wrk Lua script taking C{PREFIX SERVICE TOOL} whose
        thread I{i} calls in session PREFIX+I{i}, or L{None}.
    """

    key: str
    label: str
    prepare: Callable[[GatewayProcess, Connection, str, Tally], bytes]
    ok: Callable[[Response], bool]
    close: Callable[[GatewayProcess, Connection, str, Tally], None]
    wrk_script: Path | None = None


TRANSPORTS: list[Transport] = [
    Transport("rest", f"REST POST /services/{SERVICE}/call", _rest_prepare, _rest_ok, _rest_close, HERE / "call.lua"),
    # Streamable HTTP, legacy era: initialize, then tools/call with the
    # Mcp-Session-Id; DELETE /mcp ends the session.  No wrk script: wrk would
    # need each thread to carry the id the gateway minted for its session.
    Transport("mcp", f"MCP POST {MCP_PATH} tools/call", _mcp_prepare, _mcp_ok, _mcp_close),
]


# -- measurements through the gateway ---------------------------------------------------------


LATENCY_ROUNDS = 10
FLOOR = "floor"
CANNED = "canned"

Call = Callable[[], bool]


@dataclass(frozen=True)
class WarmResult:
    """
    A transport's warm-call latency.

    @ivar latency: The timed calls.
    @ivar gateway_cpu_us: Gateway CPU time per call, in microseconds.
    """

    latency: Latency
    gateway_cpu_us: float


def time_calls(call: Call, count: int) -> list[float]:
    """
    Make C{count} calls one at a time, timing each.

    @param call: Makes one call and says whether the answer was the expected one.
    @return: The samples, in seconds.
    """
    clock = time.perf_counter
    samples: list[float] = []
    append = samples.append
    for _ in range(count):
        start = clock()
        call()
        append(clock() - start)
    return samples


def http_call(connection: Connection, request: bytes, ok: Callable[[Response], bool], where: str, tally: Tally) -> Call:
    """
    @return: A L{Call} sending C{request} on C{connection} and counting the answer in C{tally}.
    """

    def call() -> bool:
        response = connection.request(request)
        return tally.count(where, response, ok(response))

    return call


def floor_call(child: DirectChild) -> Call:
    """
    @return: A L{Call} of C{tools/call list_todos} straight to C{child}.
    """
    params = {"name": TOOL, "arguments": {}}

    def call() -> bool:
        line = child.rpc("tools/call", params)
        if b'"result"' not in line:
            raise BenchError(f"list_todos failed on the direct child: {line!r}")
        return True

    return call


def measure_latency(
    gateway: GatewayProcess, profile: Profile, env: dict[str, str], cwd: str, tally: Tally
) -> dict[str, Any]:
    """
    One call at a time, each on its own warm session and connection: the
    floor (a direct stdio round trip to a todo server spawned here), each
    transport's warm call, and this client against a canned server replaying
    the gateway's own answer.  They take turns in L{LATENCY_ROUNDS} rounds,
    so the machine's drift affects them alike.

    @return: C{{"floor": Latency, "warm": {key: WarmResult}, "canned": Latency,
        "reference": (request, raw response)}}.
    """
    child = DirectChild(env, cwd)
    connections = {t.key: gateway.connect() for t in TRANSPORTS}
    canned_tally = Tally()
    try:
        requests = {t.key: t.prepare(gateway, connections[t.key], f"warm-{t.key}", tally) for t in TRANSPORTS}
        first = TRANSPORTS[0]
        reference = connections[first.key].request(requests[first.key])
        tally.count(f"{first.key} warm", reference, first.ok(reference))
        with CannedServer(reference.raw) as canned:
            connections[CANNED] = Connection(HOST, canned.port)
            rows: dict[str, tuple[Call, int]] = {FLOOR: (floor_call(child), profile.floor_calls)}
            for t in TRANSPORTS:
                call = http_call(connections[t.key], requests[t.key], t.ok, f"{t.key} warm", tally)
                rows[t.key] = (call, profile.warm_calls)
            canned_call = http_call(connections[CANNED], requests[first.key], first.ok, CANNED, canned_tally)
            rows[CANNED] = (canned_call, profile.warm_calls)
            samples: dict[str, list[float]] = {key: [] for key in rows}
            cpu = dict.fromkeys(rows, 0.0)
            for call, _ in rows.values():
                time_calls(call, WARMUP_CALLS)
            for _ in range(LATENCY_ROUNDS):
                for key, (call, count) in rows.items():
                    before = cpu_seconds([gateway.pid])
                    samples[key] += time_calls(call, count // LATENCY_ROUNDS)
                    cpu[key] += cpu_seconds([gateway.pid]) - before
        if canned_tally.bad:
            raise BenchError(f"the canned server's answers were not understood: {canned_tally.examples}")
        for t in TRANSPORTS:
            t.close(gateway, connections[t.key], f"warm-{t.key}", tally)
    finally:
        child.close()
        for connection in connections.values():
            connection.close()
    warm = {t.key: WarmResult(Latency.of(samples[t.key]), cpu[t.key] / len(samples[t.key]) * 1e6) for t in TRANSPORTS}
    return {
        FLOOR: Latency.of(samples[FLOOR]),
        "warm": warm,
        CANNED: Latency.of(samples[CANNED]),
        "reference": (requests[first.key], reference.raw),
    }


def measure_client_ceiling(request: bytes, raw_response: bytes, profile: Profile) -> dict[int, float]:
    """
    This client's closed-loop rate against the canned server at each
    throughput level.

    @param request: The request to send.
    @param raw_response: The gateway's answer to it, replayed.
    @return: Calls/s by number of connections.
    """
    tally = Tally()
    rates: dict[int, float] = {}
    with CannedServer(raw_response) as server:
        for level in profile.levels:
            connections = [Connection(HOST, server.port) for _ in range(level)]
            try:
                run = closed_loop(
                    connections, [request] * level, min(profile.duration, 2.0), TRANSPORTS[0].ok, CANNED, tally
                )
            finally:
                for connection in connections:
                    connection.close()
            rates[level] = run["calls_per_s"]
    if tally.bad:
        raise BenchError(f"the canned server's answers were not understood: {tally.examples}")
    return rates


def closed_loop(
    connections: Sequence[Connection],
    requests: Sequence[bytes],
    duration: float,
    ok: Callable[[Response], bool],
    where: str,
    tally: Tally,
    server: Sequence[int] = (),
    children: Sequence[int] = (),
) -> dict[str, Any]:
    """
    Every connection sends its request closed-loop for C{duration} seconds
    (after a short untimed warm-up).

    @param server: The server's process ids, to measure its CPU time per call.
    @param children: Its children's, likewise.
    @return: calls, calls/s, latency, unexpected answers, and CPU time per
        call of this client, the server and its children, all of the timed part.
    """
    warm_until = time.perf_counter() + min(0.5, duration / 4)
    drive(connections, [until(r, warm_until) for r in requests], lambda i, r, s, e: None)
    samples: list[float] = []
    bad = 0
    answers = 0

    def record(index: int, response: Response, sent: float, answered: float) -> None:
        nonlocal bad, answers
        answers += 1
        if answered <= deadline:
            samples.append(answered - sent)
        if not tally.count(where, response, ok(response)):
            bad += 1

    server_cpu, children_cpu, client_cpu = cpu_seconds(server), cpu_seconds(children), time.process_time()
    deadline = time.perf_counter() + duration
    drive(connections, [until(r, deadline) for r in requests], record)
    client_cpu = time.process_time() - client_cpu
    server_cpu = cpu_seconds(server) - server_cpu
    children_cpu = cpu_seconds(children) - children_cpu
    per_call = 1e6 / max(answers, 1)  # CPU is spent on every answer, the drain after the deadline included
    calls = len(samples)
    return {
        "calls": calls,
        "calls_per_s": calls / duration,
        "latency": Latency.of(samples) if samples else None,
        "unexpected": bad,
        "client_cpu_us": client_cpu * per_call,
        "gateway_cpu_us": server_cpu * per_call if server else None,
        "children_cpu_us": children_cpu * per_call if children else None,
    }


def measure_throughput(
    gateway: GatewayProcess, transport: Transport, profile: Profile, tally: Tally
) -> list[dict[str, Any]]:
    """
    For each level, that many sessions, each on its own keep-alive
    connection, calling closed-loop.

    @return: One row per level.
    """
    rows = []
    for level in profile.levels:
        say(f"throughput, {transport.key}, {level} sessions")
        connections = [gateway.connect() for _ in range(level)]
        sessions = [f"tp{level}-{transport.key}-{i}" for i in range(level)]
        try:
            requests = [
                transport.prepare(gateway, connection, session, tally)
                for connection, session in zip(connections, sessions, strict=True)
            ]
            run = closed_loop(
                connections,
                requests,
                profile.duration,
                transport.ok,
                f"{transport.key} throughput",
                tally,
                server=[gateway.pid],
                children=gateway.children(),
            )
            run["sessions"] = level
            for connection, session in zip(connections, sessions, strict=True):
                transport.close(gateway, connection, session, tally)
        finally:
            for connection in connections:
                connection.close()
        wait_for_children(gateway.pid, 0, 30)
        rows.append(run)
    return rows


_WRK_PERCENTILE = re.compile(r"^\s*(50|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str) -> dict[str, Any]:
    """
    @param output: What C{wrk --latency} printed.
    @return: calls/s, calls, p50/p90/p99 in ms, non-2xx answers and socket errors.
    """
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    calls = re.search(r"(\d+) requests in", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    percentiles = {f"p{m[0]}": float(m[1]) * _WRK_UNITS[m[2]] for m in _WRK_PERCENTILE.findall(output)}
    return {
        "calls_per_s": float(rate[1]) if rate else None,
        "calls": int(calls[1]) if calls else None,
        **percentiles,
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
        "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0,
    }


def measure_wrk(
    gateway: GatewayProcess, transport: Transport, profile: Profile, tally: Tally, wrk: str
) -> list[dict[str, Any]]:
    """
    The throughput rows again, with wrk: C{-t N -c N}, one session per thread.

    @return: One row per level.
    """
    assert transport.wrk_script is not None
    rows = []
    for level in profile.levels:
        say(f"throughput, {transport.key}, {level} sessions, wrk")
        prefix = f"wrk{level}-{transport.key}-"
        sessions = [f"{prefix}{i}" for i in range(level)]
        connection = gateway.connect()
        try:
            for session in sessions:
                transport.prepare(gateway, connection, session, tally)
            children = gateway.children()
            cpu, children_cpu = cpu_seconds([gateway.pid]), cpu_seconds(children)
            command = [
                wrk,
                f"-t{level}",
                f"-c{level}",
                f"-d{profile.duration:g}s",
                "--timeout",
                "10s",
                "--latency",
                "-s",
                str(transport.wrk_script),
                "-H",
                f"Authorization: {gateway.authorization}",
                f"http://{gateway.host_header}/",
                "--",
                prefix,
                SERVICE,
                TOOL,
            ]
            done = subprocess.run(command, capture_output=True, text=True, timeout=profile.duration + 60, check=False)
            cpu, children_cpu = cpu_seconds([gateway.pid]) - cpu, cpu_seconds(children) - children_cpu
            if done.returncode != 0:
                raise BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
            row = parse_wrk(done.stdout)
            calls = max(row["calls"] or 1, 1)
            row.update(sessions=level, gateway_cpu_us=cpu / calls * 1e6, children_cpu_us=children_cpu / calls * 1e6)
            # wrk must have used exactly the warmed sessions: no session was created by it.
            listed = json.loads(connection.request(gateway.request("GET", "/sessions")).body)
            row["sessions_seen"] = sum(1 for name in listed if name.startswith(prefix))
            row["stray_sessions"] = len(listed) - row["sessions_seen"]
            for session in sessions:
                transport.close(gateway, connection, session, tally)
        finally:
            connection.close()
        wait_for_children(gateway.pid, 0, 30)
        rows.append(row)
    return rows


def measure_tools(gateway: GatewayProcess, profile: Profile, tally: Tally) -> dict[str, Any]:
    """
    C{GET /services/todo/tools}: the first (filling the cache), then cached ones.
    """
    connection = gateway.connect()
    request = gateway.request("GET", f"/services/{SERVICE}/tools")

    def ok(response: Response) -> bool:
        return response.status == 200 and b'"list_todos"' in response.body

    try:
        start = time.perf_counter()
        first = connection.request(request)
        fill = time.perf_counter() - start
        tally.count("tools", first, ok(first))
        call = http_call(connection, request, ok, "tools", tally)
        time_calls(call, WARMUP_CALLS)
        samples = time_calls(call, profile.tools_calls)
    finally:
        connection.close()
    wait_for_children(gateway.pid, 0, 30)  # the lister child is closed after listing
    return {"first_fill_ms": fill * 1000, "cached": Latency.of(samples)}


def measure_first_calls(
    gateway: GatewayProcess, profile: Profile, env: dict[str, str], cwd: str, tally: Tally
) -> dict[str, Any]:
    """
    Alternate a direct child start and a new session's first call (each
    session is closed, and its child gone, before the next sample).
    """
    connection = gateway.connect()
    starts: list[float] = []
    firsts: list[float] = []
    try:
        for index in range(profile.first_calls):
            starts.append(time_child_start(env, cwd))
            session = f"first-{index}"
            begin = time.perf_counter()
            response = connection.request(gateway.call_request(session))
            firsts.append(time.perf_counter() - begin)
            tally.count("first call", response, _rest_ok(response))
            response = connection.request(gateway.delete_request(session))
            tally.count("DELETE", response, response.status == 200)
            wait_for_children(gateway.pid, 0, 10)
    finally:
        connection.close()
    return {"child_start": Latency.of(starts), "first_call": Latency.of(firsts)}


def measure_warm_first_calls(workdir: Path, env: dict[str, str], profile: Profile, tally: Tally) -> Latency:
    """
    A session's first call on a gateway of its own whose service keeps
    C{WARM_POOL} children ready (C{prewarm}); before each sample the pool is
    full again.
    """
    workdir.mkdir()
    gateway = GatewayProcess(workdir, env, 10, prewarm=WARM_POOL)
    samples: list[float] = []
    gateway.start()
    try:
        connection = gateway.connect()
        try:
            for index in range(profile.first_calls):
                _wait_for_pool(gateway.pid, WARM_POOL)
                session = f"warm-{index}"
                begin = time.perf_counter()
                response = connection.request(gateway.call_request(session))
                samples.append(time.perf_counter() - begin)
                tally.count("first call (warm pool)", response, _rest_ok(response))
                response = connection.request(gateway.delete_request(session))
                tally.count("DELETE", response, response.status == 200)
        finally:
            connection.close()
    finally:
        gateway.stop()
    return Latency.of(samples)


def _wait_for_pool(parent: int, size: int, timeout: float = 10.0) -> None:
    """
    Poll until C{parent} has exactly C{size} live children (a full pool, no session).
    """
    deadline = time.perf_counter() + timeout
    while len(children_of(parent)) != size:
        if time.perf_counter() > deadline:
            raise BenchError(f"the warm pool did not settle at {size} children")
        time.sleep(0.02)
    time.sleep(0.05)  # the newest pool child has finished its handshake by now


def measure_deletes(gateway: GatewayProcess, count: int, tally: Tally) -> Latency:
    """
    C{DELETE /sessions/<id>} one session at a time: open a session (its
    first call), close it, wait for its child to exit, again.

    @return: The latency of the C{DELETE}s.
    @raise BenchError: If a session cannot be opened.
    """
    connection = gateway.connect()
    samples: list[float] = []
    try:
        for index in range(count):
            session = f"delete-{index}"
            _rest_prepare(gateway, connection, session, tally)
            start = time.perf_counter()
            response = connection.request(gateway.delete_request(session))
            samples.append(time.perf_counter() - start)
            tally.count("DELETE", response, response.status == 200)
            wait_for_children(gateway.pid, 0, 10)
    finally:
        connection.close()
    return Latency.of(samples)


def measure_capacity(gateway: GatewayProcess, profile: Profile, tally: Tally) -> dict[str, Any]:
    """
    Open sessions (each with a live child) in batches up to C{max_sessions},
    recording the gateway's and the children's memory after each batch;
    then close them all with timed C{DELETE}s and wait for the children to go.
    """
    wait_for_children(gateway.pid, 0, 30)
    before = gateway.rss_kb()
    connections = [gateway.connect() for _ in range(OPEN_CONCURRENCY)]
    held: list[str] = []
    batches: list[dict[str, Any]] = []
    failed = 0
    try:
        while len(held) < profile.max_sessions and not failed:
            size = min(profile.batch, profile.max_sessions - len(held))
            ids = [f"cap-{len(held) + failed + i:05d}" for i in range(size)]
            current = [""] * len(connections)
            opened: list[str] = []

            def feed(index: int, mine: list[str], current: list[str] = current) -> Iterator[bytes]:
                for session in mine:
                    current[index] = session
                    yield gateway.call_request(session)

            def record(
                index: int,
                response: Response,
                sent: float,
                answered: float,
                current: list[str] = current,
                opened: list[str] = opened,
            ) -> None:
                if tally.count("capacity open", response, _rest_ok(response)):
                    opened.append(current[index])

            start = time.perf_counter()
            shares = [ids[i :: len(connections)] for i in range(len(connections))]
            drive(connections, [feed(i, share) for i, share in enumerate(shares)], record)
            seconds = time.perf_counter() - start
            held.extend(opened)
            failed += size - len(opened)
            children = gateway.children()
            batch = {
                "sessions": len(held),
                "failed": size - len(opened),
                "open_seconds": seconds,
                "opens_per_s": size / seconds,
                "gateway_rss_kb": gateway.rss_kb(),
                "children": len(children),
                "children_rss_kb": sum(rss_kb(pid) for pid in children),
            }
            batches.append(batch)
            say(
                f"capacity: {len(held)} sessions, {len(children)} children, "
                f"gateway {batch['gateway_rss_kb'] / 1024:.1f} MiB, batch in {seconds:.2f} s"
            )
        at_max = gateway.rss_kb()
        children = gateway.children()
        children_rss = sum(rss_kb(pid) for pid in children)
        pss = [pss_kb(pid) for pid in children]
        listing = []
        for _ in range(3):
            begin = time.perf_counter()
            response = connections[0].request(gateway.request("GET", "/sessions"))
            listing.append(time.perf_counter() - begin)
            tally.count("GET /sessions", response, response.status == 200)
        listed = len(json.loads(response.body)) if response.status == 200 else None
        say(f"capacity: closing {len(held)} sessions")
        deletes: list[float] = []
        for session in held:
            begin = time.perf_counter()
            response = connections[0].request(gateway.delete_request(session))
            deletes.append(time.perf_counter() - begin)
            tally.count("DELETE", response, response.status == 200)
    finally:
        for connection in connections:
            connection.close()
    drained, drain_seconds = wait_for_children(gateway.pid, 0, 120)
    time.sleep(1.0)  # let the sandbox clean-up threads finish before the last reading
    first_100 = next((b for b in batches if b["sessions"] >= 100), None)
    return {
        "held": len(held),
        "failed": failed,
        "first_failure": tally.examples[-1] if failed and tally.examples else None,
        "batches": batches,
        "gateway_rss_before_kb": before,
        "gateway_rss_at_max_kb": at_max,
        "gateway_rss_after_close_kb": gateway.rss_kb(),
        "gateway_kb_per_session": (at_max - before) / len(held) if held else None,
        "gateway_kb_per_100_first": (
            (first_100["gateway_rss_kb"] - before) / first_100["sessions"] * 100 if first_100 else None
        ),
        "children_at_max": len(children),
        "children_rss_kb": children_rss,
        "children_pss_kb": sum(p for p in pss if p is not None) if all(p is not None for p in pss) else None,
        "sessions_listed": listed,
        "list_sessions": Latency.of(listing),
        "delete": Latency.of(deletes) if deletes else None,
        "children_drained": drained,
        "drain_seconds": drain_seconds,
        "children_after_close": len(gateway.children()),
    }


# -- reporting ----------------------------------------------------------------------------------


@dataclass
class Target:
    """
    One target line: a figure against its goal.
    """

    name: str
    value: float | None
    goal: float
    unit: str
    higher_is_better: bool = False

    @property
    def verdict(self) -> str:
        """
        @return: C{PASS}, C{MISS}, or C{n/a} when the figure is missing.
        """
        if self.value is None:
            return "n/a"
        good = self.value >= self.goal if self.higher_is_better else self.value <= self.goal
        return "PASS" if good else "MISS"

    def line(self) -> str:
        """
        @return: The figure, the goal and the verdict.
        """
        sign = ">=" if self.higher_is_better else "<="
        value = "n/a" if self.value is None else f"{self.value:,.3f}".rstrip("0").rstrip(".")
        return f"{self.name}: {value} {self.unit} (target {sign} {self.goal:g} {self.unit})"


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """
    @return: An ASCII table; the first column left-aligned, the others right-aligned.
    """
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(values: Sequence[str]) -> str:
        parts = [
            f" {v:<{w}} " if i == 0 else f" {v:>{w}} " for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "|" + "|".join(parts) + "|"

    return "\n".join([title, rule, line(headers), rule, *(line(row) for row in cells), rule])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _delta(value: float | None, base: float | None) -> str | None:
    if value is None or base is None:
        return None
    return f"{value - base:+.3f}"


def targets(results: dict[str, Any]) -> list[Target]:
    """
    @return: The target lines for the figures measured.
    """
    found: list[Target] = []
    floor: Latency | None = results.get("floor")
    warm = results.get("warm", {}).get("rest")
    if floor and warm:
        found.append(Target("warm call overhead p50 (REST - floor)", warm.latency.p50 - floor.p50, 0.4, "ms"))
        found.append(Target("warm call overhead p99 (REST - floor)", warm.latency.p99 - floor.p99, 1.5, "ms"))
    mcp = results.get("warm", {}).get("mcp")
    if floor and mcp:
        found.append(
            Target(f"warm {MCP_PATH} tools/call overhead p50 (mcp - floor)", mcp.latency.p50 - floor.p50, 0.5, "ms")
        )
    for key, source in (("throughput", "own client"), ("wrk", "wrk")):
        for row in results.get(key, {}).get("rest", []):
            if row["sessions"] == 8:
                found.append(Target(f"8 sessions throughput ({source})", row["calls_per_s"], 3000, "calls/s", True))
    first = results.get("first_call")
    if first:
        found.append(
            Target("first call - child start (p50)", first["first_call"].p50 - first["child_start"].p50, 10, "ms")
        )
        if first.get("warm_pool") is not None:
            found.append(Target("first call with a warm pool (p50)", first["warm_pool"].p50, 2, "ms"))
    capacity = results.get("capacity")
    if results.get("delete"):
        found.append(Target("DELETE /sessions/<id> p99, one at a time", results["delete"].p99, 5, "ms"))
    if capacity and capacity.get("delete"):
        found.append(
            Target(f"DELETE /sessions/<id> p99, back to back from {capacity['held']}", capacity["delete"].p99, 5, "ms")
        )
    tools = results.get("tools")
    if tools:
        found.append(Target("cached GET /tools p99", tools["cached"].p99, 5, "ms"))
    if capacity and capacity.get("gateway_kb_per_session") is not None:
        found.append(Target("gateway memory per session", capacity["gateway_kb_per_session"], 50, "KiB"))
    return found


def report(results: dict[str, Any]) -> str:
    """
    @return: Every figure, as text tables.
    """
    meta = results["meta"]
    out = [
        f"mcpgateway benchmark ({meta['profile']}), {meta['started']}: nproc {meta['nproc']}, {meta['cpu']}, "
        f"Python {meta['python']}, Twisted {meta['twisted']}, mcpgateway {meta['mcpgateway']}",
        f"wrk: {meta['wrk'] or 'not on PATH (apt-get install wrk): wrk rows skipped'}",
        "",
    ]
    floor: Latency | None = results.get("floor")
    client = results.get("client_cost")
    warm = results.get("warm", {})
    rows: list[list[Any]] = []
    if floor:
        rows.append(
            ["floor: direct stdio round trip", floor.n, floor.p50, floor.p90, floor.p99, None, None, None, None]
        )
    for transport in TRANSPORTS:
        result = warm.get(transport.key)
        if result is None:
            continue
        lat = result.latency
        overhead = [_delta(lat.get(p), floor.get(p) if floor else None) for p in ("p50", "p90", "p99")]
        rows.append([f"{transport.label} (warm)", lat.n, lat.p50, lat.p90, lat.p99, *overhead, result.gateway_cpu_us])
    if client:
        lat = client["latency"]
        rows.append(["client self-cost (canned 200)", lat.n, lat.p50, lat.p90, lat.p99, None, None, None, None])
        rest = warm.get("rest")
        if rest and floor:
            net = [f"{rest.latency.get(p) - floor.get(p) - lat.get(p):+.3f}" for p in ("p50", "p90", "p99")]
            rows.append(["REST overhead net of client self-cost", None, None, None, None, *net, None])
    if rows:
        out.append(
            table(
                "Warm tool call latency (ms); overhead = row - floor at the same percentile",
                ["", "n", "p50", "p90", "p99", "ovh p50", "ovh p90", "ovh p99", "gw CPU us/call"],
                rows,
            )
        )
        out.append("")
    throughput = results.get("throughput", {})
    wrk_rows = results.get("wrk", {})
    for transport in TRANSPORTS:
        own = throughput.get(transport.key)
        if not own:
            continue
        by_level = {row["sessions"]: row for row in wrk_rows.get(transport.key, [])}
        trows = []
        for row in own:
            lat = row["latency"]
            other = by_level.get(row["sessions"], {})
            trows.append(
                [
                    row["sessions"],
                    row["calls_per_s"],
                    lat.p50 if lat else None,
                    lat.p99 if lat else None,
                    _delta(lat.p50 if lat else None, floor.p50 if floor else None),
                    row["unexpected"],
                    row["gateway_cpu_us"],
                    row["children_cpu_us"],
                    row["client_cpu_us"],
                    (client or {}).get("throughput", {}).get(row["sessions"]),
                    other.get("calls_per_s"),
                    other.get("p50"),
                    other.get("p99"),
                    (other.get("non_2xx", 0) + other.get("socket_errors", 0)) if other else None,
                ]
            )
        out.append(
            table(
                f"Throughput, {transport.label}, closed loop, {results['meta']['duration']:g} s per row "
                f"(each session its own keep-alive connection)",
                [
                    "sessions",
                    "calls/s",
                    "p50 ms",
                    "p99 ms",
                    "p50 ovh vs floor",
                    "bad",
                    "gw CPU us/call",
                    "child CPU us/call",
                    "client CPU us/call",
                    "client ceiling/s",
                    "wrk calls/s",
                    "wrk p50",
                    "wrk p99",
                    "wrk bad",
                ],
                trows,
            )
        )
        if floor:
            out.append(f"  floor for one session: {1000 / floor.mean:,.0f} calls/s (1 / mean direct round trip)")
        out.append(
            "  client ceiling = this client against the canned server at the same concurrency "
            "(client and server share one Python process)"
        )
        out.append("")
    first = results.get("first_call")
    tools = results.get("tools")
    capacity = results.get("capacity")
    erows: list[list[Any]] = []
    if first:
        start, call = first["child_start"], first["first_call"]
        erows.append(["child start, direct (spawn + handshake)", start.n, start.p50, start.p90, start.max, None])
        erows.append(
            ["session first call (spawn + call)", call.n, call.p50, call.p90, call.max, _delta(call.p50, start.p50)]
        )
        warm = first.get("warm_pool")
        if warm is not None:
            erows.append(
                [
                    f"session first call, warm pool (prewarm {WARM_POOL})",
                    warm.n,
                    warm.p50,
                    warm.p90,
                    warm.max,
                    _delta(warm.p50, start.p50),
                ]
            )
    if results.get("delete"):
        erows.append(["DELETE /sessions/<id>, one at a time", *_row(results["delete"]), None])
    if capacity and capacity.get("delete"):
        erows.append(
            [f"DELETE /sessions/<id>, back to back ({capacity['held']} live)", *_row(capacity["delete"]), None]
        )
    if capacity and capacity.get("list_sessions"):
        erows.append([f"GET /sessions with {capacity['held']} live", *_row(capacity["list_sessions"]), None])
    if tools:
        erows.append(["GET /tools, first (fills the cache)", 1, tools["first_fill_ms"], None, None, None])
        erows.append(["GET /tools, cached", *_row(tools["cached"]), None])
    if erows:
        out.append(
            table(
                "Session start and endpoints (ms); first call overhead = vs direct child start p50",
                ["", "n", "p50", "p90", "max", "ovh vs child start"],
                erows,
            )
        )
        out.append("")
    if capacity:
        crows = [
            [
                b["sessions"],
                b["failed"],
                b["children"],
                b["gateway_rss_kb"] / 1024,
                (b["gateway_rss_kb"] - capacity["gateway_rss_before_kb"]) / max(b["sessions"], 1),
                b["children_rss_kb"] / 1024,
                b["open_seconds"],
                b["opens_per_s"],
            ]
            for b in capacity["batches"]
        ]
        out.append(
            table(
                f"Capacity: sessions opened in batches, {OPEN_CONCURRENCY} connections "
                f"(gateway RSS before: {capacity['gateway_rss_before_kb'] / 1024:.1f} MiB)",
                [
                    "sessions",
                    "failed",
                    "children",
                    "gw RSS MiB",
                    "gw KiB/session",
                    "children RSS MiB",
                    "batch s",
                    "opens/s",
                ],
                crows,
            )
        )
        held = max(capacity["held"], 1)
        pss = capacity["children_pss_kb"]
        mrows = [
            ["gateway RSS growth per session (before -> max)", capacity["gateway_kb_per_session"], "KiB"],
            [
                "gateway RSS growth per 100 sessions (overall)",
                (capacity["gateway_kb_per_session"] or 0) * 100 / 1024,
                "MiB",
            ],
            [
                "gateway RSS growth per 100 sessions (first 100)",
                (capacity["gateway_kb_per_100_first"] or 0) / 1024,
                "MiB",
            ],
            ["gateway RSS after closing all", capacity["gateway_rss_after_close_kb"] / 1024, "MiB"],
            ["child RSS, mean per child", capacity["children_rss_kb"] / held, "KiB"],
            ["child PSS, mean per child", pss / held if pss is not None else None, "KiB"],
            ["children RSS, total at max", capacity["children_rss_kb"] / 1024, "MiB"],
            ["sessions held / failed", f"{capacity['held']} / {capacity['failed']}", ""],
            ["sessions listed by GET /sessions at max", capacity["sessions_listed"], ""],
            [
                "children after DELETE of all",
                f"{capacity['children_after_close']} (drained in {capacity['drain_seconds']:.2f} s)",
                "",
            ],
        ]
        out.append(table("Memory", ["", "value", "unit"], mrows))
        if capacity.get("first_failure"):
            out.append(f"  first failure: {capacity['first_failure']}")
        out.append("")
    found = targets(results)
    if found:
        out.append("Targets (report lines, not assertions)")
        out += [f"  {t.verdict:4}  {t.line()}" for t in found]
        out.append("")
    gateway = results.get("gateway", {})
    tally = results.get("responses", {})
    out.append("Gateway behaviour")
    if results.get("error"):
        out.append(f"  THE RUN DID NOT COMPLETE: {results['error']}")
    out.append(f"  responses by status: {tally.get('statuses')}; unexpected: {tally.get('unexpected') or 'none'}")
    for example in tally.get("examples", []):
        out.append(f"    {example}")
    log = gateway.get("log", {})
    out.append(
        f"  log: {log.get('lines', 0)} lines, {log.get('access', 0)} access-log lines, "
        f"{log.get('problems', 0)} warnings/errors/tracebacks"
    )
    for line in log.get("examples", []):
        out.append(f"    {line}")
    code = gateway.get("exit_code")
    how = "killed by SIGTERM as twistd re-raises it after shutting down" if code == -signal.SIGTERM else "unexpected"
    out.append(
        f"  stopped with SIGTERM: exit status {code} ({how}), main loop terminated: "
        f"{'yes' if log.get('clean_shutdown') else 'NO'}; children at stop: {gateway.get('children_at_stop')}; "
        f"processes left behind: {gateway.get('leftover', 'unknown')}"
    )
    out.append(f"  run time: {results.get('run_seconds', 0):.1f} s")
    return "\n".join(out)


def _row(lat: Latency) -> list[Any]:
    return [lat.n, lat.p50, lat.p90, lat.max]


def plot(results: dict[str, Any], path: Path) -> str:
    """
    Bar chart of latency percentiles, one group per row (floor, each
    transport, client self-cost), and throughput by sessions.

    @return: What happened, for the log.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    rows: list[tuple[str, Latency]] = []
    if results.get("floor"):
        rows.append(("floor: direct stdio", results["floor"]))
    for transport in TRANSPORTS:
        if transport.key in results.get("warm", {}):
            rows.append((transport.label, results["warm"][transport.key].latency))
    if results.get("client_cost"):
        rows.append(("client self-cost", results["client_cost"]["latency"]))
    if not rows:
        return "nothing to plot"
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(13, 5))
    percentiles = ("p50", "p90", "p99")
    width = 0.8 / len(rows)
    for index, (label, lat) in enumerate(rows):
        positions = [p + (index - (len(rows) - 1) / 2) * width for p in range(len(percentiles))]
        bars = left.bar(positions, [lat.get(p) for p in percentiles], width, label=label)
        left.bar_label(bars, fmt="%.3f", fontsize=7)
    left.set_xticks(range(len(percentiles)), percentiles)
    left.set_ylabel("ms")
    left.set_title("Warm tool call latency")
    left.legend(fontsize=8)
    for transport in TRANSPORTS:
        for key, style in (("throughput", "o-"), ("wrk", "s--")):
            series = results.get(key, {}).get(transport.key)
            if series:
                levels = [row["sessions"] for row in series]
                right.plot(levels, [row["calls_per_s"] or 0 for row in series], style, label=f"{transport.key} ({key})")
    levels = results["meta"]["levels"]
    right.set_xscale("log", base=2)
    right.set_xticks(levels, [str(level) for level in levels])
    right.axhline(3000, color="grey", linestyle=":", label="target at 8 sessions")
    right.set_xlabel("concurrent sessions")
    right.set_ylabel("calls/s")
    right.set_title("Throughput")
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    figure.suptitle(f"mcpgateway {results['meta']['mcpgateway']}, {results['meta']['started']}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return f"plot written to {path}"


def to_json(value: Any) -> Any:
    """
    @return: C{value} with dataclasses, bytes and integer keys made JSON-able.
    """
    if isinstance(value, (WarmResult, Latency)):
        return asdict(value)
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value


def machine(profile: Profile, wrk: str | None) -> dict[str, Any]:
    """
    @return: What the figures were measured on.
    """
    import mcpgateway
    import twisted

    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError), open("/proc/meminfo") as handle:
        memory = int(handle.readline().split()[1])
    wrk_version = None
    if wrk:
        done = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10, check=False)
        wrk_version = (
            (done.stdout + done.stderr).splitlines()[0].split(" Copyright")[0] if done.stdout + done.stderr else wrk
        )
    return {
        "profile": profile.name,
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "memory_kb": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "twisted": twisted.__version__,
        "mcpgateway": mcpgateway.__version__,
        "wrk": wrk_version,
        "duration": profile.duration,
        "levels": list(profile.levels),
        "max_sessions": profile.max_sessions,
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


def scan_log(path: Path, access: Path) -> dict[str, Any]:
    """
    @return: Line counts of the gateway's log and access log, and its warnings and errors.
    """
    if not path.exists():
        return {"lines": 0}
    lines = path.read_text(errors="replace").splitlines()
    calls = access.read_text().count("\n") if access.exists() else 0
    problem = re.compile(r"#(warn|error|critical)\]|Traceback|Unhandled|Error:", re.I)
    problems = [line for line in lines if problem.search(line)]
    return {
        "lines": len(lines),
        "access": calls,
        "problems": len(problems),
        "examples": [line[:300] for line in problems[:8]],
        "clean_shutdown": any("Main loop terminated" in line for line in lines[-50:]),
    }


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Run:
    """
    One benchmark run: its gateway, its processes and what it measured so far.
    """

    profile: Profile
    out: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)
    results: dict[str, Any] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)

    def execute(self) -> int:
        """
        Measure everything; always stop the gateway and check for leftovers.

        @return: The exit status.
        """
        wrk = shutil.which("wrk")
        self.results["meta"] = machine(self.profile, wrk)
        env = {**os.environ, TAG_VARIABLE: self.tag}
        status = 0
        with tempfile.TemporaryDirectory(prefix="mcpgateway-bench-") as temp:
            workdir = Path(temp)
            (workdir / "direct").mkdir()
            gateway = GatewayProcess(workdir, env, self.profile.max_sessions)
            try:
                self.measure(gateway, env, str(workdir / "direct"), wrk)
            except (KeyboardInterrupt, BenchError, OSError) as error:
                kind = "interrupted" if isinstance(error, KeyboardInterrupt) else f"failed: {error}"
                say(f"benchmark {kind}")
                if not isinstance(error, (KeyboardInterrupt, BenchError)):
                    traceback.print_exc()
                self.results["error"] = kind
                status = 130 if isinstance(error, KeyboardInterrupt) else 1
            finally:
                self.finish(gateway)
        self.results["run_seconds"] = time.monotonic() - _started
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.json").write_text(json.dumps(to_json(self.results), indent=2) + "\n")
        print(report(self.results))
        print(f"results: {self.out / 'results.json'}")
        print(plot(self.results, self.out / "latency.png"))
        if self.results["gateway"].get("leftover"):
            status = status or 1
        return status

    def measure(self, gateway: GatewayProcess, env: dict[str, str], cwd: str, wrk: str | None) -> None:
        """
        Every measurement, in order; results land in C{self.results} as they come.
        """
        profile, tally, results = self.profile, self.tally, self.results
        say(f"starting the gateway on {HOST}:{gateway.port} ({gateway.workdir})")
        gateway.start()
        results["gateway_rss_start_kb"] = gateway.rss_kb()
        # Memory first, while the gateway's heap holds only what one session
        # left: later traffic leaves freed memory that new sessions would
        # reuse, hiding their cost.
        say("priming: one session opened and closed")
        measure_deletes(gateway, 1, tally)
        say(f"capacity: up to {profile.max_sessions} sessions in batches of {profile.batch}")
        results["capacity"] = measure_capacity(gateway, profile, tally)
        say(
            f"latency, {LATENCY_ROUNDS} interleaved rounds: {profile.floor_calls} direct stdio round trips, "
            f"{profile.warm_calls} warm calls per transport, {profile.warm_calls} against the canned server"
        )
        latency = measure_latency(gateway, profile, env, cwd, tally)
        results["floor"] = latency[FLOOR]
        results["warm"] = latency["warm"]
        results["client_cost"] = {"latency": latency[CANNED]}
        say("client ceiling: closed loop against the canned server")
        request, raw_response = latency["reference"]
        results["client_cost"]["throughput"] = measure_client_ceiling(request, raw_response, profile)
        say(f"GET /tools: {profile.tools_calls} cached")
        results["tools"] = measure_tools(gateway, profile, tally)
        say(f"first calls and direct child starts: {profile.first_calls} each")
        results["first_call"] = measure_first_calls(gateway, profile, env, cwd, tally)
        say(f"first calls with a warm pool (prewarm {WARM_POOL}): {profile.first_calls}")
        results["first_call"]["warm_pool"] = measure_warm_first_calls(gateway.workdir / "warm", env, profile, tally)
        say(f"DELETE, one session at a time: {profile.deletes}")
        results["delete"] = measure_deletes(gateway, profile.deletes, tally)
        results["throughput"] = {}
        results["wrk"] = {}
        for transport in TRANSPORTS:
            results["throughput"][transport.key] = measure_throughput(gateway, transport, profile, tally)
            if wrk and transport.wrk_script:
                results["wrk"][transport.key] = measure_wrk(gateway, transport, profile, tally, wrk)
        if not wrk:
            say("wrk is not on PATH: wrk rows skipped (apt-get install wrk)")

    def finish(self, gateway: GatewayProcess) -> None:
        """
        Stop the gateway (SIGTERM, wait), then find and kill anything this run
        started that is still alive.  A second Ctrl-C cannot interrupt this.
        """
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("stopping the gateway")
        live_children = len(gateway.children()) if gateway.pid else 0
        gateway.stop()
        leftover = []
        deadline = time.perf_counter() + 5
        while (leftover := tagged_processes(self.tag, exclude=gateway.pid)) and time.perf_counter() < deadline:
            time.sleep(0.1)
        for pid in leftover:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        say(f"gateway stopped (status {gateway.exit_code}); processes left behind: {len(leftover)}")
        self.results["responses"] = self.tally.as_dict()
        self.results["gateway"] = {
            "exit_code": gateway.exit_code,
            "children_at_stop": live_children,
            "leftover": len(leftover),
            "leftover_pids": leftover,
            "log": scan_log(gateway.log_path, gateway.workdir / "access.jsonl"),
        }


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """
    Parse the command line and run the benchmark.

    @return: The exit status: 0 when the run completed and left nothing behind.
    """
    parser = argparse.ArgumentParser(description="Benchmark mcpgateway against its example todo server.")
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter runs, --max-sessions 200")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="directory for results.json and latency.png")
    parser.add_argument("--max-sessions", type=int, help="where the capacity step stops (default 1000; --quick 200)")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    if args.max_sessions:
        profile = dataclasses.replace(profile, max_sessions=args.max_sessions)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the gateway holds 3 pipes per child
    signal.signal(signal.SIGTERM, _interrupted)
    return Run(profile, args.out).execute()


if __name__ == "__main__":
    sys.exit(main())
