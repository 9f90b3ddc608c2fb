"""
What a run writes and records besides its report: C{results.json}
(L{to_json}, the machine it ran on, the gateway's log scanned) and the plot
C{latency.png}.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import resource
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness import Profile
from latency import WarmResult
from stats import Latency
from transports import TRANSPORTS


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
