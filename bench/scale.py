"""
Scale-out benchmark: one gateway process against C{server.workers: 2}, and
the reference gateway (SignalWire's C{mcp-gateway}, the Flask service of
C{signalwire-agents}), side by side in one run::

    python bench/scale.py [--quick] [--duration S] [--out bench/results] [--reference-python PY]

Each target is started in turn on a free 127.0.0.1 port against the example
todo server (C{python -m mcpgateway.examples.todo_server}), measured at 8
and 64 concurrent sessions, and stopped; the run checks that nothing it
started is left (every process carries C{MCPGATEWAY_BENCH_TAG}).  Two
workers share their sessions through a C{redis-server} this run starts on
a free port.

Two rows per level:

keep-alive (this client)
    Each session has its own keep-alive connection, opened before the
    session's first call; closed loop (bench/loadgen.py).  With workers the
    kernel gave the connection to one worker, which took the session: every
    call is served where it lands.

wrk
    C{wrk -t N -c N} (bench/call.lua), the sessions opened beforehand on
    another connection (the reference's only row: it answers HTTP/1.0 and
    closes every connection, which wrk reopens): with workers, a session's calls land on a worker
    that does not own it about half of the time and are forwarded, as a
    client opening a new connection per call (the SignalWire skill may)
    would see.

The ratios printed are of the same run; the targets (2 workers >= 1.7x one,
>= 5x the reference) are report lines, not assertions.  On a 2-core machine
the load generator and the children share the cores with the workers: each
row also prints the CPU per call of the gateways, the MCP children and the
load generator with 2 workers, and the most calls/s the cores allow at that
cost (see bench/README.rst, "Workers and the reference gateway").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from harness import (
    HERE,
    HOST,
    PASSWORD,
    SERVICE,
    TAG_VARIABLE,
    USER,
    BenchError,
    GatewayProcess,
    free_port,
    say,
    stop_and_sweep,
)
from loadgen import Connection, Response
from procfs import children_of, cpu_seconds
from stats import Tally
from throughput import closed_loop, parse_wrk, wrk_command

LEVELS = (8, 64)
REDIS_SECRET = "bench-fleet-secret-0123456789"


def _ok(response: Response) -> bool:
    return response.status == 200 and b'"is_error":false' in response.body


def _reference_ok(response: Response) -> bool:
    return response.status == 200 and b'"result"' in response.body


class Workers(GatewayProcess):
    """
    The gateway with C{server.workers} processes (and the C{cluster} section when more than one).
    """

    def __init__(self, workdir: Path, env: dict[str, str], workers: int, redis_uri: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir, env, 200)
        config = json.loads(self.config_path.read_text())
        config["server"]["workers"] = workers
        config["audit"] = {"enabled": False}
        #: Worker i's internal port: where its own /metrics is read.
        self.internal_ports = [free_port()] if workers > 1 else []
        if workers > 1:
            base = self.internal_ports[0]
            self.internal_ports = [base + index for index in range(workers)]
            config["cluster"] = {"redis": redis_uri, "secret": REDIS_SECRET, "internal_port": base}
        self.config_path.write_text(json.dumps(config, indent=2))
        self.label = f"mcpgateway, {workers} worker{'s' if workers > 1 else ''}"
        self.ok = _ok
        self.workers = workers

    def start(self, timeout: float = 30.0) -> None:
        """
        Start it and wait until every worker answers at its internal port
        (the public port answers as soon as the first one listens: a row
        started then would give every connection to that one).
        """
        super().start(timeout)
        deadline = time.perf_counter() + timeout
        waiting = list(self.internal_ports)
        while waiting:
            try:
                connection = Connection(HOST, waiting[0], timeout=2)
            except OSError:
                if time.perf_counter() > deadline:
                    raise BenchError(f"worker at port {waiting[0]} did not listen:\n{self.log_tail()}") from None
                time.sleep(0.05)
                continue
            try:
                if connection.request(self.request("GET", "/health")).status == 200:
                    waiting.pop(0)
            finally:
                connection.close()

    def forwarded(self) -> int:
        """
        @return: Calls the workers forwarded to another worker so far (their C{mcpgateway_forwards_total}).
        """
        total = 0
        for port in self.internal_ports:
            connection = Connection(HOST, port)
            try:
                text = connection.request(self.request("GET", "/metrics")).body.decode()
            finally:
                connection.close()
            for line in text.splitlines():
                if line.startswith('mcpgateway_forwards_total{outcome="answered"}'):
                    total += int(float(line.split()[-1]))
        return total

    def serving(self) -> list[int]:
        """
        @return: The processes serving HTTP: the workers and their supervisor, or the one process.
        """
        return [self.pid, *children_of(self.pid)] if self.workers > 1 else [self.pid]


class Reference(GatewayProcess):
    """
    SignalWire's C{mcp-gateway} (C{signalwire_agents.mcp_gateway.gateway_service}) on the same todo server.
    """

    def __init__(self, workdir: Path, env: dict[str, str], python: str) -> None:
        """
        @param python: An interpreter with C{signalwire-agents}, C{flask} and
            C{flask-limiter} (signalwire-agents 1.1.0 does not require the last two).
        """
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir, env, 200)
        self.python = python
        huge = "100000000 per minute"
        config = {
            "server": {"host": HOST, "port": self.port, "auth_user": USER, "auth_password": PASSWORD},
            "services": {
                SERVICE: {
                    "command": [sys.executable, "-m", "mcpgateway.examples.todo_server"],
                    "description": "todos",
                    "enabled": True,
                }
            },
            "session": {"default_timeout": 3600, "max_sessions_per_service": 1000, "cleanup_interval": 60},
            "rate_limiting": {
                "default_limits": [huge],
                "call_limit": huge,
                "tools_limit": huge,
                "session_delete_limit": huge,
            },
            "logging": {"level": "WARNING"},
        }
        self.config_path.write_text(json.dumps(config, indent=2))
        self.label = "reference (signalwire-agents mcp-gateway)"
        self.ok = _reference_ok

    def serving(self) -> list[int]:
        return [self.pid]

    def command(self) -> list[str]:
        return [self.python, "-m", "signalwire_agents.mcp_gateway.gateway_service", "-c", str(self.config_path)]


def keep_alive_row(gateway: Any, level: int, duration: float, tally: Tally) -> dict[str, Any]:
    """
    C{level} sessions, each first called on its own keep-alive connection, then closed loop on it.
    """
    connections = [gateway.connect() for _ in range(level)]
    sessions = [f"ka{level}-{uuid.uuid4().hex[:6]}-{i}" for i in range(level)]
    try:
        requests = []
        for connection, session in zip(connections, sessions, strict=True):
            request = gateway.call_request(session)
            response = connection.request(request)
            if not gateway.ok(response):
                raise BenchError(f"{gateway.label}: first call failed: {response.status} {response.body[:300]!r}")
            requests.append(request)
        serving = gateway.serving()
        forwarded = gateway.forwarded() if isinstance(gateway, Workers) else 0
        row = closed_loop(
            connections,
            requests,
            duration,
            gateway.ok,
            f"{gateway.label} keep-alive",
            tally,
            server=serving,
            children=mcp_children(serving),
        )
    finally:
        for connection in connections:
            connection.close()
    close_sessions(gateway, sessions)
    forwarded = (gateway.forwarded() - forwarded) if isinstance(gateway, Workers) else 0
    return {
        "calls_per_s": row["calls_per_s"],
        "p50_ms": row["latency"].p50,
        "gateway_cpu_us": row["gateway_cpu_us"],
        "children_cpu_us": row["children_cpu_us"],
        "client_cpu_us": row["client_cpu_us"],
        "forwarded_share": forwarded / max(row["calls"], 1),
        "unexpected": row["unexpected"],
    }


def wrk_row(gateway: Any, level: int, duration: float, wrk: str, tally: Tally) -> dict[str, Any]:
    """
    C{level} sessions opened (each on a connection of its own), then C{wrk -t level -c level}.
    """
    prefix = f"wrk{level}-{uuid.uuid4().hex[:6]}-"
    sessions = [f"{prefix}{i}" for i in range(level)]
    for session in sessions:
        connection = gateway.connect()  # one each: the reference closes every connection
        try:
            response = connection.request(gateway.call_request(session))
        finally:
            connection.close()
        if not gateway.ok(response):
            raise BenchError(f"{gateway.label}: first call failed: {response.status} {response.body[:300]!r}")
    command = wrk_command(wrk, level, duration, str(HERE / "call.lua"), gateway, prefix)
    serving = gateway.serving()
    children = mcp_children(serving)
    forwarded = gateway.forwarded() if isinstance(gateway, Workers) else 0
    cpu, children_cpu = cpu_seconds(serving), cpu_seconds(children)
    client = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
    cpu = cpu_seconds(serving) - cpu
    children_cpu = cpu_seconds(children) - children_cpu
    waited = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, reaped by subprocess.run
    client_cpu = waited.ru_utime + waited.ru_stime - client.ru_utime - client.ru_stime
    forwarded = (gateway.forwarded() - forwarded) if isinstance(gateway, Workers) else 0
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    row = parse_wrk(done.stdout)
    close_sessions(gateway, sessions)
    return {
        "calls_per_s": row["calls_per_s"],
        "p50_ms": row.get("p50"),
        "gateway_cpu_us": cpu / max(row["calls"] or 1, 1) * 1e6,
        "children_cpu_us": children_cpu / max(row["calls"] or 1, 1) * 1e6,
        "client_cpu_us": client_cpu / max(row["calls"] or 1, 1) * 1e6,
        "forwarded_share": forwarded / max(row["calls"] or 1, 1),
        "unexpected": row["non_2xx"] + row["socket_errors"],
    }


def mcp_children(serving: list[int]) -> list[int]:
    """
    @param serving: The processes serving HTTP.
    @return: Their MCP children (the todo servers of the open sessions).
    """
    return [child for pid in serving for child in children_of(pid) if child not in serving]


def close_sessions(gateway: Any, sessions: list[str]) -> None:
    """
    DELETE each session (the reference sleeps 0.2 s per DELETE: it is only stopped).
    """
    if isinstance(gateway, Reference):
        return
    connection = gateway.connect()
    try:
        for session in sessions:
            connection.request(gateway.delete_request(session))
    finally:
        connection.close()


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not installed (apt-get install redis-server): 2 workers need it")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    return process, f"redis://{HOST}:{port}/0"


def main() -> int:
    parser = argparse.ArgumentParser(description="1 worker vs 2 workers vs the reference gateway.")
    parser.add_argument("--quick", action="store_true", help="2 s per row (default 5 s)")
    parser.add_argument("--duration", type=float, help="seconds per row")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="directory for scale.json")
    parser.add_argument(
        "--reference-python",
        default=sys.executable,
        help="interpreter with signalwire-agents, flask and flask-limiter (default: this one)",
    )
    args = parser.parse_args()
    duration = args.duration or (2.0 if args.quick else 5.0)
    wrk = shutil.which("wrk")
    tag = uuid.uuid4().hex
    env = {**os.environ, TAG_VARIABLE: tag}
    tally = Tally()
    results: dict[str, Any] = {"duration_s": duration, "nproc": os.cpu_count(), "targets": {}}
    leftover: list[int] = []
    with tempfile.TemporaryDirectory(prefix="mcpgateway-scale-") as temp:
        workdir = Path(temp)
        redis, redis_uri = start_redis(workdir)
        try:
            targets = [
                Workers(workdir / "one", env, 1, redis_uri),
                Workers(workdir / "two", env, 2, redis_uri),
                Reference(workdir / "reference", env, args.reference_python),
            ]
            for gateway in targets:
                say(f"starting {gateway.label}")
                rows: dict[str, Any] = {}
                try:
                    gateway.start()
                    for level in LEVELS:
                        if not isinstance(gateway, Reference):  # Werkzeug answers HTTP/1.0: no keep-alive
                            say(f"{gateway.label}: {level} sessions, keep-alive")
                            rows[f"keep-alive {level}"] = keep_alive_row(gateway, level, duration, tally)
                        if wrk:
                            say(f"{gateway.label}: {level} sessions, wrk")
                            rows[f"wrk {level}"] = wrk_row(gateway, level, duration, wrk, tally)
                finally:
                    leftover += stop_and_sweep(gateway, tag)
                results["targets"][gateway.label] = rows
        finally:
            redis.send_signal(signal.SIGTERM)
            redis.wait(timeout=10)
    results["leftover"] = leftover
    print(report(results))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.out / 'scale.json'}")
    if tally.bad:
        print(f"unexpected answers: {tally.examples}")
    return 1 if leftover or tally.bad else 0


def report(results: dict[str, Any]) -> str:
    """
    @return: The table, the ratios and the target lines.
    """
    targets = results["targets"]
    rows = sorted(
        {row for target in targets.values() for row in target}, key=lambda r: (r.split()[0], int(r.split()[1]))
    )
    names = list(targets)
    lines = [
        f"calls/s, p50, gateway CPU per call ({results['duration_s']:g} s per row, {results['nproc']} cores, one run)",
        "",
    ]
    lines.append(f"{'row':<16}" + "".join(f"{name[:26]:>28}" for name in names))
    for row in rows:
        cells = []
        for name in names:
            cell = targets[name].get(row)
            cells.append(
                f"{cell['calls_per_s']:>6.0f} {cell['p50_ms']:6.2f} ms {cell['gateway_cpu_us']:5.0f} us"
                if cell
                else "-"
            )
        lines.append(f"{row:<16}" + "".join(f"{c:>28}" for c in cells))
    one, two, reference = names[0], names[1], names[2]
    lines.append("")
    for row in rows:
        a, b = (targets[n].get(row, {}).get("calls_per_s") for n in (one, two))
        # The reference closes every connection (HTTP/1.0): its wrk row is its only one.
        r = targets[reference].get(f"wrk {row.split()[1]}", {}).get("calls_per_s")
        if a and b and r:
            scale, versus = b / a, b / r
            lines.append(
                f"{row:<16} 2 workers / 1 = {scale:4.2f}x ({'PASS' if scale >= 1.7 else 'MISS'} >= 1.7x); "
                f"2 workers / reference wrk = {versus:5.1f}x ({'PASS' if versus >= 5 else 'MISS'} >= 5x); "
                f"1 worker / reference wrk = {a / r:5.1f}x"
            )
            cpu_one, cpu_two = targets[one][row]["gateway_cpu_us"], targets[two][row]["gateway_cpu_us"]
            lines.append(
                f"{'':<16} 2 workers forwarded {targets[two][row]['forwarded_share']:.0%} of calls; CPU per call "
                f"{cpu_two / cpu_one:4.2f}x one worker's, so 2 idle cores would give {2 * cpu_one / cpu_two:4.2f}x"
            )
            lines.append(_ceiling(row, targets[two][row], results["nproc"], a))
    lines.append(f"processes left behind: {len(results['leftover'])}")
    return "\n".join(lines)


def _ceiling(row: str, cell: dict[str, Any], cores: int, one: float) -> str:
    """
    @param cell: The 2-worker row.
    @param one: The 1-worker calls/s of the same row.
    @return: What the machine allows 2 workers: every call costs the
        gateways', the MCP children's and the load generator's CPU, and the
        cores can give no more than C{cores} seconds of it per second.
    """
    parts = [cell["gateway_cpu_us"], cell.get("children_cpu_us"), cell.get("client_cpu_us")]
    if not all(parts):
        return f"{'':<16} (no CPU budget: children or load generator not measured)"
    total = sum(parts)
    most = cores / total * 1e6
    return (
        f"{'':<16} CPU per call with 2 workers: gateways {parts[0]:.0f} + MCP children {parts[1]:.0f} + "
        f"load generator {parts[2]:.0f} = {total:.0f} us; {cores} cores serve at most {most:.0f} calls/s, "
        f"{most / one:4.2f}x one worker's"
    )


if __name__ == "__main__":
    sys.exit(main())
