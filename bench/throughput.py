"""
Throughput: sessions calling closed-loop, each on its own keep-alive
connection, at each concurrency level, with this client and (if it is
installed) with C{wrk}; and this client's ceiling against the canned server.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from harness import HOST, SERVICE, TOOL, BenchError, GatewayProcess, Profile, say
from latency import CANNED
from loadgen import CannedServer, Connection, Response, drive, until
from procfs import cpu_seconds, wait_for_children
from stats import Latency, Tally
from transports import TRANSPORTS, Transport


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


def wrk_command(wrk: str, level: int, duration: float, script: str, gateway: Any, prefix: str) -> list[str]:
    """
    @return: C{wrk -t level -c level} calling C{SERVICE}'s C{TOOL} through
        C{script} in the sessions named C{prefix0}, C{prefix1}...
    """
    return [
        wrk,
        f"-t{level}",
        f"-c{level}",
        f"-d{duration:g}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        script,
        "-H",
        f"Authorization: {gateway.authorization}",
        f"http://{gateway.host_header}/",
        "--",
        prefix,
        SERVICE,
        TOOL,
    ]


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
            command = wrk_command(wrk, level, profile.duration, str(transport.wrk_script), gateway, prefix)
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
