"""
Profile the gateway's warm REST call path.

Run it with the interpreter mcpgateway is installed in::

    python bench/profile.py [--calls N] [--sessions 8] [--out DIR]
                            [--profiler sample|cprofile|none] [--rounds R]

It starts its own gateway as bench/run.py does (twistd, a generated
configuration, a free 127.0.0.1 port, the example todo server), opens
C{--sessions} sessions, each on its own keep-alive connection, warms them up,
then makes C{--calls} closed-loop C{POST /services/todo/call} calls in
C{--rounds} rounds.  It stops the gateway with SIGTERM, checks that no process
it started is left, and prints (and writes to C{DIR/profile.txt}) the
gateway's CPU time per call (C{/proc/<pid>/stat}), the top functions by own
time, and that time per call by area: twisted.web, Klein/werkzeug, each
mcpgateway module, the limits library, JSON, Deferreds, the reactor and I/O,
logging, metrics, tracing, other.

Profilers:

  - C{sample} (the default): the gateway samples its own reactor thread's
    stack on CPU time (C{ITIMER_PROF}, one sample per kernel tick of CPU
    used) during the timed rounds only; the shares are scaled to the CPU
    time per call measured from C{/proc}.  Its cost is a few per cent, and
    time spent preempted or idle is never sampled.
  - C{cprofile}: C{twistd --profile=DIR/gateway.pstats --profiler=cprofile
    --savestats}, the whole run (warm-up included).  Exact call counts, but
    it triples the gateway's CPU time (inflating code that makes many small
    calls) and its wall clock counts the time the gateway is preempted, e.g.
    inside the write that wakes a child.
  - C{none}: only the CPU time per call, e.g. to compare two versions of
    the gateway (C{PYTHONPATH=/path/to/copy python bench/profile.py
    --profiler none --rounds 5}).
"""

from __future__ import annotations

import argparse
import dis
import itertools
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, FrameType

from harness import HERE, TAG_VARIABLE, BenchError, GatewayProcess, say, stop_and_sweep
from loadgen import Connection, Response, drive
from procfs import cpu_seconds
from stats import Tally
from transports import REST

WARMUP_CALLS = 500  # per session, before the timed rounds
TOP = 25
SAMPLER = "--sampled-twistd"  # this script's own argument when it runs the gateway

REACTOR = "reactor: events, pipe/socket I/O"
#: Areas by fragment of C{<file>:<function>}, first match wins.
AREAS = (
    ("/twisted/web/", "twisted.web HTTP parsing/writing"),
    ("/klein/", "Klein/werkzeug routing"),
    ("/werkzeug/", "Klein/werkzeug routing"),
    ("/limits/", "rate limiting (limits library)"),
    ("/twisted/protocols/basic.py", "twisted.web HTTP parsing/writing"),  # HTTPChannel's LineReceiver
    ("/json/", "JSON"),
    ("/twisted/internet/defer.py", "Deferreds and coroutines"),
    ("/twisted/internet/", REACTOR),
    ("/twisted/python/util.py:untilConcludes", REACTOR),  # around os.write and socket.send
    ("/twisted/python/log.py:callWith", REACTOR),  # around each reactor event
    ("/twisted/python/context.py", REACTOR),
    ("/twisted/logger/", "logging"),
    ("/twisted/python/log.py", "logging"),
    ("/prometheus_client/", "metrics (prometheus_client)"),
    ("/opentelemetry/", "tracing (opentelemetry)"),
)
#: cProfile's built-in functions by name fragment; the others count in their caller's area.
BUILTIN_AREAS = (
    ("_json", "JSON"),
    ("socket", REACTOR),
    ("posix.", REACTOR),
    ("epoll", REACTOR),
)


#: Where the reactor waits for events (cProfile's wall clock counts the wait).
IDLE = "<method 'poll' of 'select.epoll' objects>"


def area_of(path: str, function: str = "") -> str:
    """
    @param path: A function's file (C{~} for a built-in).
    @param function: Its name.
    @return: Its area of the breakdown.
    """
    path = path.replace(os.sep, "/")
    if path == "~":
        return next((area for key, area in BUILTIN_AREAS if key in function), "other")
    if "/mcpgateway/" in path and path.endswith(".py"):
        return "mcpgateway." + path.rsplit("/mcpgateway/", 1)[1][:-3].replace("/", ".")
    where = f"{path}:{function}"
    return next((area for key, area in AREAS if key in where), "other")


def short(path: str) -> str:
    """
    @return: C{path} from its package directory on.
    """
    for marker in ("/site-packages/", "/mcpgateway/", "/lib/python3."):
        if marker in path:
            tail = path.rsplit(marker, 1)[1]
            return {"/mcpgateway/": "mcpgateway/", "/lib/python3.": "stdlib:"}.get(marker, "") + tail
    return path


# -- the sampler, run inside the gateway ---------------------------------------------


def sampled_twistd(out: str, argv: list[str]) -> None:
    """
    Run twistd with C{argv} in this process; once the reactor runs, SIGUSR1
    starts sampling the reactor thread's stack every kernel tick of CPU time
    the process uses (C{ITIMER_PROF}) and SIGUSR2 stops it and writes the
    samples to C{out}, one line per stack (outermost frame first), as
    C{func (file:line);... count}.

    A sample taken as a function starts (the interpreter runs signal handlers
    at function entries and loop jumps) is its caller's: the time was spent
    before, e.g. in a C function the caller called.
    """
    resume = dis.opmap.get("RESUME")
    stacks: Counter[tuple[CodeType, ...]] = Counter()

    def sample(signum: int, frame: FrameType | None) -> None:
        if frame is not None and frame.f_back is not None and frame.f_code.co_code[frame.f_lasti] == resume:
            frame = frame.f_back
        codes = []
        while frame is not None:
            codes.append(frame.f_code)
            frame = frame.f_back
        stacks[tuple(codes)] += 1

    def start(signum: int, frame: FrameType | None) -> None:
        stacks.clear()
        signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)

    def stop(signum: int, frame: FrameType | None) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0)
        with open(out + ".part", "w") as handle:
            for codes, count in stacks.items():
                names = (f"{c.co_name} ({c.co_filename}:{c.co_firstlineno})" for c in reversed(codes))
                handle.write(f"{';'.join(names)} {count}\n")
        os.replace(out + ".part", out)

    def install() -> None:
        signal.signal(signal.SIGPROF, sample)
        signal.signal(signal.SIGUSR1, start)
        signal.signal(signal.SIGUSR2, stop)

    from twisted.internet import reactor
    from twisted.scripts.twistd import run

    reactor.callWhenRunning(install)
    sys.argv = ["twistd", *argv]
    run()  # type: ignore[no-untyped-call]


# -- reading profiles -----------------------------------------------------------------


@dataclass(frozen=True)
class Own:
    """
    One function's own time.

    @ivar name: The function, with its file.
    @ivar area: Its area.
    @ivar amount: Its own time (seconds, or samples).
    @ivar calls: How often it was called (L{None} when sampled).
    """

    name: str
    area: str
    amount: float
    calls: int | None


def from_pstats(path: Path) -> list[Own]:
    """
    Read a cProfile dump.  A built-in's time counts in its caller's area
    unless L{BUILTIN_AREAS} names it; the reactor's wait in C{epoll} is left out.

    @return: Every function's own time, in seconds.
    """
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, dict[tuple[str, int, str], tuple[float, ...]]]]
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    functions = []
    for (file, line, function), (_, calls, own, _, callers) in stats.items():
        if function == IDLE:
            continue
        if file == "~" and area_of(file, function) == "other" and callers:
            for (caller_file, _, caller_function), edge in callers.items():
                area = area_of(caller_file, caller_function)
                functions.append(Own(f"{function} <- {short(caller_file)}", area, float(edge[2]), int(edge[0])))
            continue
        functions.append(Own(f"{short(file)}:{line}({function})", area_of(file, function), own, calls))
    return functions


def from_samples(path: Path) -> list[Own]:
    """
    Read the sampler's output: each sample counts for its innermost frame.

    @return: Samples per function.
    """
    counts: Counter[tuple[str, str]] = Counter()
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        function, _, where = stack.rsplit(";", 1)[-1].partition(" (")
        counts[(where.rstrip(")"), function)] += int(samples)
    return [
        Own(f"{short(where)}({function})", area_of(where.rsplit(":", 1)[0], function), n, None)
        for (where, function), n in counts.items()
    ]


def report(functions: Sequence[Own], scale: float, calls: int, header: Iterable[str]) -> str:
    """
    @param functions: Own times.
    @param scale: Microseconds per call of one unit of L{Own.amount}.
    @param calls: Tool calls profiled (for the calls-per-call column).
    @param header: Lines to print first.
    @return: The text of the report.
    """
    total = sum(f.amount for f in functions) or 1.0
    merged: defaultdict[tuple[str, str], float] = defaultdict(float)
    counts: Counter[tuple[str, str]] = Counter()
    areas: defaultdict[str, float] = defaultdict(float)
    for f in functions:
        merged[(f.name, f.area)] += f.amount
        counts[(f.name, f.area)] += f.calls or 0
        areas[f.area] += f.amount
    lines = [*header, "", f"Top {TOP} functions by own time", f"{'us/call':>8} {'%':>5} {'n/call':>7}  function [area]"]
    for (name, area), amount in sorted(merged.items(), key=lambda item: -item[1])[:TOP]:
        n = f"{counts[(name, area)] / calls:7.2f}" if counts[(name, area)] else f"{'-':>7}"
        lines.append(f"{amount * scale:8.1f} {100 * amount / total:5.1f} {n}  {name} [{area}]")
    lines += ["", "Gateway CPU per call by area (own time)", f"{'us/call':>8} {'%':>5}  area"]
    by_area = sorted(areas.items(), key=lambda item: -item[1])
    lines += [f"{amount * scale:8.1f} {100 * amount / total:5.1f}  {area}" for area, amount in by_area]
    lines.append(f"{total * scale:8.1f} 100.0  total")
    return "\n".join(lines)


# -- the run ------------------------------------------------------------------------------


class ProfiledGateway(GatewayProcess):
    """
    The benchmark's gateway (bench/harness.py), under the sampler, twistd's cProfile runner, or nothing.
    """

    def __init__(self, workdir: Path, env: dict[str, str], sessions: int, profiler: str, output: Path) -> None:
        """
        @param profiler: C{sample}, C{cprofile} or C{none}.
        @param output: Where the profile goes.
        """
        super().__init__(workdir, env, sessions)
        self.profiler = profiler
        self.output = output

    def command(self) -> list[str]:
        """
        @return: The twistd command line, adapted to the profiler.
        """
        command = super().command()
        arguments = command[command.index("-n") :]
        if self.profiler == "sample":
            return [sys.executable, str(Path(__file__).resolve()), SAMPLER, str(self.output), *arguments]
        if self.profiler == "cprofile":
            profile = [f"--profile={self.output}", "--profiler=cprofile", "--savestats"]
            return [*command[: -len(arguments)], *profile, *arguments]
        return command

    def sampling(self, on: bool) -> None:
        """
        Start (C{on}) or stop the sampler; stopping waits for its output.
        """
        if self.profiler != "sample":
            return
        os.kill(self.pid, signal.SIGUSR1 if on else signal.SIGUSR2)
        deadline = time.perf_counter() + 30
        while not on and not self.output.exists():
            if time.perf_counter() > deadline:
                raise BenchError("the gateway wrote no samples")
            time.sleep(0.05)


def calls_in_rounds(connections: Sequence[Connection], requests: Sequence[bytes], calls: int, tally: Tally) -> int:
    """
    C{calls} calls spread over the connections, each closed-loop.

    @return: The calls made.
    """
    share = [calls // len(connections) + (i < calls % len(connections)) for i in range(len(connections))]

    def record(index: int, response: Response, sent: float, answered: float) -> None:
        tally.count("call", response, REST.ok(response))

    drive(connections, [itertools.repeat(r, n) for r, n in zip(requests, share, strict=True)], record)
    return sum(share)


def run_queue_wait(pid: int) -> float:
    """
    @return: Seconds the process's main thread (the reactor) spent runnable
        but waiting for a CPU so far (C{/proc/<pid>/schedstat}), 0 if unknown.
    """
    try:
        with open(f"/proc/{pid}/schedstat") as handle:
            return int(handle.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def measure(gateway: ProfiledGateway, args: argparse.Namespace, tally: Tally) -> dict[str, list[float]]:
    """
    Open the sessions, warm them up, make the timed rounds (sampled), close the sessions.

    @return: C{calls} (every tool call made, timed), C{seconds}, and per
        round the gateway's C{cpu} and C{wait} (for a CPU) per call, in us.
    """
    connections = [gateway.connect() for _ in range(args.sessions)]
    sessions = [f"profile-{i}" for i in range(args.sessions)]
    found: dict[str, list[float]] = {"cpu": [], "wait": []}
    try:
        requests = [REST.prepare(gateway, c, s, tally) for c, s in zip(connections, sessions, strict=True)]
        made = len(requests) + calls_in_rounds(connections, requests, WARMUP_CALLS * len(connections), tally)
        gateway.sampling(True)
        start, timed = time.perf_counter(), 0
        for _ in range(args.rounds):
            cpu, wait = cpu_seconds([gateway.pid]), run_queue_wait(gateway.pid)
            done = calls_in_rounds(connections, requests, args.calls // args.rounds, tally)
            found["cpu"].append((cpu_seconds([gateway.pid]) - cpu) / done * 1e6)
            found["wait"].append((run_queue_wait(gateway.pid) - wait) / done * 1e6)
            timed += done
        found["seconds"] = [time.perf_counter() - start]
        gateway.sampling(False)
        for connection, session in zip(connections, sessions, strict=True):
            REST.close(gateway, connection, session, tally)
        found["calls"] = [made + timed, timed]
    finally:
        for connection in connections:
            connection.close()
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """
    Parse the command line, profile, report.

    @return: 0 when the run completed with only expected answers and left nothing behind.
    """
    parser = argparse.ArgumentParser(description="Profile the gateway's warm REST call path.")
    parser.add_argument("--calls", type=int, default=20000, help="timed calls (default 20000)")
    parser.add_argument("--sessions", type=int, default=8, help="concurrent sessions, one connection each (default 8)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "profile", help="directory for the output")
    parser.add_argument("--profiler", choices=("sample", "cprofile", "none"), default="sample")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of calls (CPU time per call of each)")
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.rounds < 1 or args.calls < args.rounds * args.sessions:
        parser.error("--sessions and --rounds must be at least 1, and --calls at least their product")
    args.out.mkdir(parents=True, exist_ok=True)
    output = (args.out / {"sample": "samples.txt", "cprofile": "gateway.pstats"}.get(args.profiler, "none")).resolve()
    output.unlink(missing_ok=True)
    tag, tally = uuid.uuid4().hex, Tally()
    env = {**os.environ, TAG_VARIABLE: tag}
    code = [sys.executable, "-c", "import mcpgateway; print(mcpgateway.__file__)"]
    where = subprocess.run(code, env=env, capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="mcpgateway-profile-") as temp:
        gateway = ProfiledGateway(Path(temp), env, args.sessions, args.profiler, output)
        say(f"gateway ({where}) on port {gateway.port}, profiler {args.profiler}")
        try:
            gateway.start()
            say(f"{args.sessions} sessions, {WARMUP_CALLS} warm-up calls each, then {args.calls} timed calls")
            found = measure(gateway, args, tally)
        finally:
            leftover = len(stop_and_sweep(gateway, tag))
            say(f"gateway stopped (status {gateway.exit_code}); processes left behind: {leftover}")
    cpu, (calls, timed), seconds = found["cpu"], found["calls"], found["seconds"][0]
    spread = f" (rounds: {', '.join(f'{c:.0f}' for c in cpu)}; sd {statistics.stdev(cpu):.1f})" if len(cpu) > 1 else ""
    header = [
        f"gateway code: {where}",
        f"{timed:.0f} timed calls over {args.sessions} sessions in {seconds:.2f} s ({timed / seconds:.0f} calls/s, "
        "wall clock: noisy on a shared machine)",
        f"gateway CPU per timed call (/proc/<pid>/stat), profiler {args.profiler}: {statistics.mean(cpu):.1f} us"
        f"{spread}; its reactor also waited {statistics.mean(found['wait']):.1f} us per call for a CPU",
        f"responses: {dict(tally.statuses)}; unexpected: {dict(tally.bad) or 'none'}; processes left: {leftover}",
    ]
    if args.profiler == "cprofile":
        header.append(
            f"cProfile, wall clock: own time per tool call over all {calls:.0f} calls (warm-up included), "
            "the reactor's wait in epoll left out"
        )
        text = report(from_pstats(output), 1e6 / calls, int(calls), header)
    elif args.profiler == "sample":
        functions = from_samples(output)
        samples = sum(f.amount for f in functions) or 1.0
        header.append(f"sampler: {samples:.0f} samples on CPU time of the timed calls, scaled to the CPU per call")
        text = report(functions, statistics.mean(cpu) / samples, int(timed), header)
    else:
        text = "\n".join(header)
    print(text)
    (args.out / "profile.txt").write_text(text + "\n")
    print(f"written: {args.out / 'profile.txt'}")
    return 0 if not tally.bad and not leftover else 1


if __name__ == "__main__":
    if sys.argv[1:2] == [SAMPLER]:
        sys.path.pop(0)  # bench/ must not shadow anything the gateway imports
        sampled_twistd(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(main())
