"""
Warm-call latency, one call at a time: the floor (a direct stdio round
trip), each transport's warm call through the gateway, and this client
against a canned server replaying the gateway's answer (its self-cost).
Also the helpers that time calls one at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from floor import DirectChild
from harness import HOST, TOOL, BenchError, GatewayProcess, Profile
from loadgen import CannedServer, Connection, Response
from procfs import cpu_seconds
from stats import Latency, Tally
from transports import TRANSPORTS

WARMUP_CALLS = 200  # untimed calls before the timed ones, per row
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
