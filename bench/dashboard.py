"""
What the admin dashboard's call numbers cost: L{CallStats.record} per call
(on the reactor thread, for every tool call) and L{CallStats.snapshot} per
poll of C{GET /admin/stats} (every 2 s while a dashboard is open).

    python bench/dashboard.py [--calls 200000] [--services 10]

In-process, no gateway: the figures are the Python work alone.  The calls
are spread over the services and over the whole window (a clock advanced
by hand), so every bucket holds its full sample of latencies when the
snapshot is timed.
"""

from __future__ import annotations

import argparse
import random
import time

from twisted.internet.task import Clock

from mcpgateway.calls import CallRecord, CallRequest
from mcpgateway.observe.callstats import CallStats
from mcpgateway.policy.auth import Principal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--services", type=int, default=10)
    options = parser.parse_args()
    clock = Clock()
    clock.advance(1_000_000)
    stats = CallStats(clock)
    principal = Principal("bench", "agent")
    names = [f"service{n}" for n in range(options.services)]
    records = [
        CallRecord(
            CallRequest(principal, names[n % len(names)], "tool", {}, "s", "rest"),
            0.0,
            random.random() / 100,
            "ok" if n % 50 else "tool_error",
            200,
        )
        for n in range(1000)
    ]
    step = stats.window / options.calls
    started = time.perf_counter()
    for n in range(options.calls):
        stats.record(records[n % 1000])
        clock.advance(step)
    record_us = (time.perf_counter() - started) / options.calls * 1e6
    rounds = 20
    started = time.perf_counter()
    for _ in range(rounds):
        stats.snapshot(names)
    snapshot_ms = (time.perf_counter() - started) / rounds * 1e3
    print(f"CallStats.record: {record_us:.2f} us per call (incl. Clock.advance) over {options.calls} calls")
    print(f"CallStats.snapshot: {snapshot_ms:.2f} ms for {options.services} services with a full window")


if __name__ == "__main__":
    main()
