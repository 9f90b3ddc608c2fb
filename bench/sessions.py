"""
Session start and the session endpoints: a session's first call against a
direct child start (and with a warm pool), C{DELETE /sessions/<id>},
C{GET /services/todo/tools}, and the capacity step (sessions opened in
batches up to C{--max-sessions}, with the gateway's and the children's
memory, then all torn down).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from floor import time_child_start
from harness import SERVICE, BenchError, GatewayProcess, Profile, say
from latency import WARMUP_CALLS, http_call, time_calls
from loadgen import Connection, Response, drive
from procfs import children_of, pss_kb, rss_kb, wait_for_children
from stats import Latency, Tally
from transports import REST

WARM_POOL = 2  # prewarm of the warm-pool gateway
OPEN_CONCURRENCY = 8  # connections the capacity step opens its sessions on


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
            firsts.append(_time_first_call(gateway, connection, f"first-{index}", "first call", tally))
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
                samples.append(_time_first_call(gateway, connection, f"warm-{index}", "first call (warm pool)", tally))
        finally:
            connection.close()
    finally:
        gateway.stop()
    return Latency.of(samples)


def _time_first_call(gateway: GatewayProcess, connection: Connection, session: str, where: str, tally: Tally) -> float:
    """
    Open a session with its first call (which spawns or takes its child),
    timed, then C{DELETE} it.

    @param session: The new session's id.
    @param where: What the first call counts as in C{tally}.
    @return: Seconds the first call took.
    """
    begin = time.perf_counter()
    response = connection.request(gateway.call_request(session))
    seconds = time.perf_counter() - begin
    tally.count(where, response, REST.ok(response))
    response = connection.request(gateway.delete_request(session))
    tally.count("DELETE", response, response.status == 200)
    return seconds


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
            REST.prepare(gateway, connection, session, tally)
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
                if tally.count("capacity open", response, REST.ok(response)):
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
