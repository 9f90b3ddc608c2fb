"""
Warm call latency of a remote (C{url}) service against a stdio child of the
same server: C{python bench/remote.py [--calls N]}.

One gateway (C{twistd -n mcpgateway}) with four services, all the official
SDK's FastMCP answering the same C{count} tool: C{stdio} (a child,
C{tests/servers/fastmcp_server.py}), and three C{url} services on one
C{tests/servers/remote_server.py} on loopback (uvicorn): C{modern}
(Streamable HTTP, 2026-07-28), C{legacy} (Streamable HTTP, C{initialize} +
C{Mcp-Session-Id}) and C{sse} (HTTP+SSE, 2024-11-05).  Each is called
C{N} times in one session over one keep-alive connection, after a first
call that opens the session; the p50 and p95 are printed, and each one's
ratio to C{stdio} (compare only figures of one run: machines differ).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVERS = ROOT / "tests" / "servers"
HOST = "127.0.0.1"
USER, PASSWORD = "bench", "bench-password-0123"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"a process exited with status {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {timeout:g} s")


def call(connection: http.client.HTTPConnection, service: str, session: str) -> float:
    body = json.dumps({"tool": "count", "session_id": session, "arguments": {}})
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    started = time.perf_counter()
    connection.request(
        "POST",
        f"/services/{service}/call",
        body,
        {"Content-Type": "application/json", "Authorization": f"Basic {token}"},
    )
    response = connection.getresponse()
    data = response.read()
    seconds = time.perf_counter() - started
    if response.status != 200:
        raise SystemExit(f"{service}: HTTP {response.status}: {data[:300]!r}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    options = parser.parse_args()
    upstream_port, gateway_port = free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="mcpgw-bench-remote-"))
    mcp_url = f"http://{HOST}:{upstream_port}/mcp"
    sse_port = free_port()
    config = {
        "server": {"host": HOST, "port": gateway_port, "auth_user": USER, "auth_password": PASSWORD},
        "services": {
            "stdio": {"command": [sys.executable, str(SERVERS / "fastmcp_server.py")], "sandbox": {"level": "none"}},
            "modern": {"url": mcp_url, "protocol": "modern"},
            "legacy": {"url": mcp_url, "protocol": "legacy"},
            "sse": {"url": f"http://{HOST}:{sse_port}/sse", "transport": "sse"},
        },
        "session": {"sandbox_dir": str(work / "sandbox")},
        "rate_limiting": {"enabled": False},
        "logging": {"level": "WARN"},
    }
    (work / "config.json").write_text(json.dumps(config))
    processes = [
        subprocess.Popen([sys.executable, str(SERVERS / "remote_server.py"), str(upstream_port), "streamable"]),
        subprocess.Popen([sys.executable, str(SERVERS / "remote_server.py"), str(sse_port), "sse"]),
    ]
    twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    log = open(work / "twistd.out", "wb")  # noqa: SIM115
    gateway = subprocess.Popen(
        [*twistd, "-n", "--pidfile=", "mcpgateway", "--config", str(work / "config.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=work,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    processes.append(gateway)
    try:
        wait_listening(upstream_port, processes[0])
        wait_listening(sse_port, processes[1])
        wait_listening(gateway_port, gateway)
        connection = http.client.HTTPConnection(HOST, gateway_port, timeout=30)
        results: dict[str, list[float]] = {}
        for service in ("stdio", "modern", "legacy", "sse"):
            first = call(connection, service, f"bench-{service}")
            times = [call(connection, service, f"bench-{service}") for _ in range(options.calls)]
            results[service] = times
            print(f"{service:7} first call {first * 1000:7.1f} ms", flush=True)
        base = statistics.median(results["stdio"])
        print(f"\n{'service':7} {'p50 ms':>8} {'p95 ms':>8} {'p50 / stdio':>12}   ({options.calls} warm calls each)")
        for service, times in results.items():
            p50 = statistics.median(times)
            p95 = statistics.quantiles(times, n=20)[18]
            print(f"{service:7} {p50 * 1000:8.2f} {p95 * 1000:8.2f} {p50 / base:12.2f}")
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        log.close()


if __name__ == "__main__":
    main()
