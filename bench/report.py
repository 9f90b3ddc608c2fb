"""
The text report of a run: its tables of every figure, the target lines
(PASS/MISS, not assertions) and how the gateway behaved.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

from sessions import OPEN_CONCURRENCY, WARM_POOL
from stats import Latency, table
from transports import MCP_PATH, TRANSPORTS


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
