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

This file is the runner: the command line and the order of the
measurements.  The gateway and what they share are in bench/harness.py, each
measurement in a module of its own (bench/README.rst lists them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from harness import (
    FULL,
    HERE,
    HOST,
    QUICK,
    TAG_VARIABLE,
    BenchError,
    GatewayProcess,
    Profile,
    elapsed,
    say,
    stop_and_sweep,
)
from latency import CANNED, FLOOR, LATENCY_ROUNDS, measure_latency
from report import report
from results import machine, plot, scan_log, to_json
from sessions import (
    WARM_POOL,
    measure_capacity,
    measure_deletes,
    measure_first_calls,
    measure_tools,
    measure_warm_first_calls,
)
from stats import Tally
from throughput import measure_client_ceiling, measure_throughput, measure_wrk
from transports import TRANSPORTS


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
        self.results["run_seconds"] = elapsed()
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
        leftover = stop_and_sweep(gateway, self.tag)
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
