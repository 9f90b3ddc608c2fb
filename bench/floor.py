"""
The floor: the example todo server spawned by the benchmark itself and spoken
to over its pipes (L{DirectChild}), the way the gateway speaks to its
children.  Nothing can be faster than its round trip; its start time is what
a session's first call is compared with.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from typing import Any

from harness import LEGACY_VERSION, TODO_COMMAND, BenchError


class DirectChild:
    """
    The todo server spawned by the benchmark itself and spoken to over its
    pipes, the way the gateway speaks to its children: the floor.
    """

    def __init__(self, env: dict[str, str], cwd: str) -> None:
        """
        Spawn it and complete the legacy handshake (C{initialize}, then
        C{notifications/initialized}).

        @param env: Its environment.
        @param cwd: Its working directory.
        """
        self.process = subprocess.Popen(
            TODO_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=cwd
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._stdin = self.process.stdin.fileno()
        self._readline = self.process.stdout.readline
        self._next_id = 0
        answer = self.rpc(
            "initialize",
            {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
        )
        if b'"result"' not in answer:
            raise BenchError(f"the todo server refused initialize: {answer!r}")
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, message: dict[str, Any]) -> None:
        """
        @param message: One JSON-RPC message, written as one line.
        """
        os.write(self._stdin, json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def rpc(self, method: str, params: dict[str, Any]) -> bytes:
        """
        @return: The answer line to a request.
        """
        self._next_id += 1
        self.send({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params})
        line: bytes = self._readline()
        if not line:
            raise BenchError("the todo server exited")
        return line

    def close(self) -> None:
        """
        Close its stdin (it exits at end of input) and reap it.
        """
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        assert self.process.stdout is not None
        self.process.stdout.close()


def time_child_start(env: dict[str, str], cwd: str) -> float:
    """
    @return: Seconds to spawn the todo server and complete its handshake.
    """
    start = time.perf_counter()
    child = DirectChild(env, cwd)
    elapsed = time.perf_counter() - start
    child.close()
    return elapsed
