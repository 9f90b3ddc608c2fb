"""
A real C{redis-server} on a free loopback port, for the tests of shared rate
limits (L{mcpgateway.policy.ratelimit}).

L{start_redis} skips the test when C{redis-server} is not installed (a failure
in CI, see L{tests.conftest.require_binary}).  The server keeps nothing on
disk (C{--save '' --appendonly no}) and is killed when the test ends.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from .conftest import free_port, require_binary

__all__ = ["RedisServer", "free_port", "redis_server_at"]


class RedisServer:
    """
    A running C{redis-server}.

    @ivar port: Its loopback port.
    @ivar uri: Its C{redis://} URI (database 0).
    """

    def __init__(self, binary: str, directory: Path, port: int) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port
        self.uri = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """
        Start the server and wait until it answers C{PING}.

        @raise RuntimeError: If it does not within C{timeout} seconds.
        """
        log = open(self.directory / f"redis-{self.port}.log", "ab")  # noqa: SIM115 - closed by the child's exit
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                output = (self.directory / f"redis-{self.port}.log").read_text(errors="replace")
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {output[-2000:]}")
            with contextlib.suppress(redis.RedisError):
                if self.client().ping():
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout} s")
            time.sleep(0.02)

    def client(self) -> redis.Redis:
        """
        @return: A short-timeout client of this server.
        """
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0, socket_connect_timeout=1.0)

    def stop(self) -> None:
        """
        Stop the server (and wait for it, so that the port is free again).
        """
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@contextlib.contextmanager
def redis_server_at(directory: Path) -> Iterator[RedisServer]:
    """
    Run a C{redis-server} on a free loopback port for the duration.

    Skips the test when C{redis-server} is not installed.
    """
    binary = require_binary("redis-server")
    for attempt in range(3):
        server = RedisServer(binary, directory, free_port())
        try:
            server.start()
        except RuntimeError:  # the port was taken in between: try another
            if attempt == 2:
                raise
            continue
        break
    try:
        yield server
    finally:
        server.stop()
