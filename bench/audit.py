"""
What the audit log costs the gateway per warm REST call.

Run it with the interpreter mcpgateway is installed in::

    python bench/audit.py [--calls 5000] [--rounds 5] [--sessions 8] [--results]

It starts two gateways as bench/run.py does (twistd, a generated
configuration, a free 127.0.0.1 port, the example todo server): one with
C{"audit": {"enabled": false}}, one with the audit log on as shipped (SQLite
under C{server.state_dir}; C{--results} also stores the todo service's
results).  Both get C{--sessions} sessions on keep-alive connections and
500 warm-up calls per session; then, in C{--rounds} rounds, each gets
C{--calls} closed-loop C{POST /services/todo/call} calls, the two taking
turns (the order alternating) so that the machine's drift hits both alike.

For each round it reads, per gateway: the CPU time of the reactor thread
(the main thread: C{/proc/<pid>/task/<pid>/schedstat}, nanoseconds), of the
audit writer thread (the task named C{mcpgw-audit}), and of the whole process
(C{/proc/<pid>/stat}).  It prints the medians per call, and the difference
of the reactor thread's time with the audit log on and off against the
target: under 50 us.  At the end it checks that the audit database holds one
record per call made to the gateway with the audit log on, and that nothing
was dropped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from harness import TAG_VARIABLE, BenchError, GatewayProcess, say, stop_and_sweep
from loadgen import Connection, Response, drive
from procfs import cpu_seconds
from stats import Tally
from transports import REST

WARMUP_CALLS = 500  # per session
TARGET_US = 50.0
WRITER = "mcpgw-audit"  # the audit writer thread's name (mcpgateway.observe.auditwriter)


def thread_seconds(pid: int, tid: int) -> float:
    """
    @return: The CPU time of one thread so far (C{schedstat}: nanoseconds), 0 if it is gone.
    """
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as handle:
            return int(handle.read().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def writer_thread(pid: int) -> int | None:
    """
    @return: The task id of the gateway's audit writer thread, if it has one.
    """
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as handle:
                if handle.read().strip() == WRITER:
                    return int(tid)
        except OSError:
            continue
    return None


class AuditGateway(GatewayProcess):
    """
    The benchmark's gateway (bench/harness.py) with the audit log on or off.
    """

    def __init__(self, workdir: Path, env: dict[str, str], sessions: int, audit: dict[str, object]) -> None:
        """
        @param audit: Its C{audit} section.
        """
        workdir.mkdir()
        super().__init__(workdir, env, sessions)
        config = json.loads(self.config_path.read_text())
        config["audit"] = audit
        self.config_path.write_text(json.dumps(config, indent=2))
        self.on = audit.get("enabled", True) is not False
        self.calls = 0
        self.connections: list[Connection] = []
        self.requests: list[bytes] = []
        self.writer: int | None = None

    def open_sessions(self, count: int, tally: Tally) -> None:
        """
        Open C{count} sessions, each on its own connection, and warm them up.
        """
        self.connections = [self.connect() for _ in range(count)]
        names = [f"audit-{uuid.uuid4().hex[:8]}-{i}" for i in range(count)]
        self.requests = [REST.prepare(self, c, s, tally) for c, s in zip(self.connections, names, strict=True)]
        self.calls += count + self.run_calls(WARMUP_CALLS * count, tally)
        self.writer = writer_thread(self.pid)
        if self.on and self.writer is None:
            raise BenchError(f"no {WRITER} thread in the gateway with the audit log on")

    def run_calls(self, calls: int, tally: Tally) -> int:
        """
        C{calls} closed-loop calls spread over the sessions.

        @return: The calls made.
        """
        count = len(self.connections)
        share = [calls // count + (i < calls % count) for i in range(count)]

        def record(index: int, response: Response, sent: float, answered: float) -> None:
            tally.count("call", response, REST.ok(response))

        drive(self.connections, [itertools.repeat(r, n) for r, n in zip(self.requests, share, strict=True)], record)
        self.calls += sum(share)
        return sum(share)

    def measure(self, calls: int, tally: Tally) -> dict[str, float]:
        """
        @return: Microseconds per call of the C{reactor} and C{writer} threads and the C{process}.
        """
        before = self._cpu()
        done = self.run_calls(calls, tally)
        after = self._cpu()
        return {key: (after[key] - before[key]) / done * 1e6 for key in before}

    def _cpu(self) -> dict[str, float]:
        return {
            "reactor": thread_seconds(self.pid, self.pid),
            "writer": thread_seconds(self.pid, self.writer) if self.writer else 0.0,
            "process": cpu_seconds([self.pid]),
        }

    def close(self) -> None:
        for connection in self.connections:
            connection.close()

    def records(self) -> int | None:
        """
        @return: The records in its audit database (once stopped), or L{None} without one.
        """
        path = self.workdir / "state" / "audit.sqlite3"
        if not path.exists():
            return None
        with sqlite3.connect(path) as connection:
            return int(connection.execute("SELECT count(*) FROM audit_calls").fetchone()[0])


def median(rounds: Sequence[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def record_cost(results: bool, samples: int = 200_000) -> float:
    """
    Time what the audit log adds on the reactor thread directly: its
    C{record} (the observer L{mcpgateway.calls.ToolCalls} calls once per call),
    in this process, on this thread's CPU clock, with a REST call's record.

    @return: Microseconds per call.
    """
    from twisted.internet.task import Clock

    from mcpgateway.calls import CallRecord, CallRequest
    from mcpgateway.config import AuditConfig
    from mcpgateway.observe.audit import AuditLog
    from mcpgateway.policy.auth import Principal

    config = AuditConfig(queue_size=samples + 1, results=("todo",) if results else ())
    audit = AuditLog(config, "sqlite:/nonexistent/never-opened", Clock())  # never started: nothing is written
    request = CallRequest(Principal("bench", "admin"), "todo", "list_todos", {}, "s-1", "rest", "127.0.0.1")
    answer = {"session_id": "s-1", "service": "todo", "tool": "list_todos", "result": "no todos", "is_error": False}
    record = CallRecord(request, 1.0, 0.0004, "ok", 200, answer)
    started = time.thread_time()
    for _ in range(samples):
        audit.record(record)
    return (time.thread_time() - started) / samples * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    """
    Measure, report.

    @return: 0 when the run completed with only expected answers, every call
        recorded and nothing left behind (the target is reported, not asserted).
    """
    parser = argparse.ArgumentParser(description="The audit log's CPU cost per warm REST call.")
    parser.add_argument("--calls", type=int, default=3000, help="timed calls per gateway and round (default 3000)")
    parser.add_argument("--rounds", type=int, default=16, help="rounds (default 16)")
    parser.add_argument("--sessions", type=int, default=8, help="concurrent sessions per gateway (default 8)")
    parser.add_argument("--results", action="store_true", help="also store the todo service's results")
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.rounds < 1 or args.calls < args.sessions:
        parser.error("--sessions and --rounds must be at least 1, --calls at least --sessions")
    tally = Tally()
    tags = {False: uuid.uuid4().hex, True: uuid.uuid4().hex}  # one each: a sweep must spare the other gateway
    audit_on: dict[str, object] = {"enabled": True, **({"results": ["todo"]} if args.results else {})}
    found: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    left = 0
    with tempfile.TemporaryDirectory(prefix="mcpgateway-audit-bench-") as temp:
        off = AuditGateway(
            Path(temp) / "off", {**os.environ, TAG_VARIABLE: tags[False]}, args.sessions, {"enabled": False}
        )
        on = AuditGateway(Path(temp) / "on", {**os.environ, TAG_VARIABLE: tags[True]}, args.sessions, audit_on)
        try:
            for gateway in (off, on):
                gateway.start()
                gateway.open_sessions(args.sessions, tally)
            say(f"gateways on ports {off.port} (audit off) and {on.port} (audit on); {args.rounds} rounds")
            for number in range(args.rounds):
                for gateway in (off, on) if number % 2 == 0 else (on, off):
                    found[gateway.on].append(gateway.measure(args.calls, tally))
                last = found[False][-1]["reactor"], found[True][-1]["reactor"]
                say(f"round {number + 1}: reactor thread off {last[0]:.1f} us, on {last[1]:.1f} us per call")
        finally:
            for gateway in (off, on):
                gateway.close()
                left += len(stop_and_sweep(gateway, tags[gateway.on]))
        records = on.records()
    reactor_off, reactor_on = median(found[False], "reactor"), median(found[True], "reactor")
    process_off, process_on = median(found[False], "process"), median(found[True], "process")
    writer = median(found[True], "writer")
    # Paired: each round's two figures were taken back to back, so the drift of the machine cancels out.
    pairs = list(zip(found[True], found[False], strict=True))
    difference = statistics.median(on_["reactor"] - off_["reactor"] for on_, off_ in pairs)
    process_difference = statistics.median(on_["process"] - off_["process"] for on_, off_ in pairs)
    direct = record_cost(args.results)
    spread = [r["reactor"] for r in found[True]], [r["reactor"] for r in found[False]]
    lines = [
        f"{args.rounds} rounds of {args.calls} calls per gateway over {args.sessions} sessions"
        f"{' (results stored)' if args.results else ''}; medians per call:",
        f"  reactor thread CPU: audit off {reactor_off:.1f} us, on {reactor_on:.1f} us; "
        f"difference (median of the rounds' paired differences) {difference:+.1f} us",
        f"    (rounds on: {', '.join(f'{x:.0f}' for x in spread[0])}; off: {', '.join(f'{x:.0f}' for x in spread[1])})",
        f"  audit writer thread CPU: {writer:.1f} us",
        f"  whole gateway process CPU: audit off {process_off:.1f} us, on {process_on:.1f} us; "
        f"difference {process_difference:+.1f} us",
        f"  AuditLog.record alone, on this process's thread clock: {direct:.2f} us",
        f"  audit records written: {records} for {on.calls} calls",
        f"  responses: {dict(tally.statuses)}; unexpected: {dict(tally.bad) or 'none'}; processes left: {left}",
        f"{'PASS' if difference < TARGET_US else 'MISS'}: audit on costs {difference:.1f} us of reactor time "
        f"per call (target < {TARGET_US:.0f} us)",
    ]
    print("\n".join(lines))
    return 0 if not tally.bad and not left and records == on.calls else 1


if __name__ == "__main__":
    sys.exit(main())
