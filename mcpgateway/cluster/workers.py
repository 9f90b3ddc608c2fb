"""
C{server.workers}: several processes serving one listening port.

The twistd process becomes a supervisor (L{WorkerPool}): it starts N
workers, each a C{twistd -n mcpgateway --worker I} of its own, restarts one
that dies (after a delay that grows while it keeps dying at start), relays
their log lines into its own log, and on stop sends them SIGTERM (SIGKILL
after a grace) and waits for them.  Each worker binds the port itself with
C{SO_REUSEPORT} (L{ReusePortService}), so the kernel spreads connections
over them; each owns its sessions and has an internal listener of its own,
which the others forward a session's calls to (L{mcpgateway.cluster.placement}).

A worker dies with its supervisor: C{PR_SET_PDEATHSIG} (L{die_with_parent}).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorProcess, IReactorSocket, IReactorTime
from twisted.internet.protocol import ProcessProtocol, ServerFactory
from twisted.python.failure import Failure

from mcpgateway.observe.logs import logger

__all__ = [
    "STOP_GRACE",
    "SUPERVISOR_ENV",
    "ReusePortService",
    "WorkerPool",
    "die_with_parent",
    "reuseport_socket",
    "worker_command",
]

log = logger("mcpgateway.workers")

#: The supervisor's pid, in each worker's environment.
SUPERVISOR_ENV = "MCPGATEWAY_SUPERVISOR_PID"
#: Seconds before a dead worker is started again; doubled while it dies young.
RESTART_DELAY = 1.0
RESTART_DELAY_MAX = 30.0
#: A worker that ran this long was healthy: its next restart waits L{RESTART_DELAY} again.
HEALTHY_SECONDS = 10.0
#: Seconds a worker has to stop after SIGTERM before SIGKILL, beyond its drain.
STOP_GRACE = 30.0
_PR_SET_PDEATHSIG = 1
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} ")


def reuseport_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """
    @return: A listening, non-blocking socket on C{host}:C{port} with
        C{SO_REUSEPORT}, which other workers bind too.
    @raise OSError: If it cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ReusePortService(Service):
    """
    Listens on C{host}:C{port} with C{SO_REUSEPORT} while running.

    @ivar port: The listening port, while running.
    """

    def __init__(self, reactor: IReactorSocket, host: str, port: int, factory: ServerFactory) -> None:
        self.reactor = reactor
        self.host = host
        self.number = port
        self.factory = factory
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        sock = reuseport_socket(self.host, self.number)
        try:
            self.port = self.reactor.adoptStreamPort(sock.fileno(), sock.family, self.factory)
        finally:
            sock.close()  # the reactor holds its own copy of the descriptor
        super().startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return Deferred.fromCoroutine(_stopped(port))


async def _stopped(port: IListeningPort) -> None:
    await port.stopListening()  # type: ignore[misc]


def die_with_parent(parent: int) -> None:
    """
    Have the kernel send this process SIGTERM when its parent (the
    supervisor, pid C{parent}) dies; exit now if it already has.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        log.warn("PR_SET_PDEATHSIG is not available: this worker outlives a killed supervisor")
    if os.getppid() != parent:
        raise SystemExit("mcpgateway: the supervisor of this worker has gone")


def worker_command(config_path: str, index: int) -> list[str]:
    """
    @return: The command line of worker C{index}: this interpreter running
        twistd in the foreground, logging to stdout (relayed by the supervisor).
    """
    return [
        sys.executable,
        "-c",
        "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
        "--nodaemon",
        "--pidfile=",
        "--logfile=-",
        "mcpgateway",
        "--config",
        os.path.abspath(config_path),
        "--worker",
        str(index),
    ]


class _Worker(ProcessProtocol):
    def __init__(self, pool: WorkerPool, index: int, started: float) -> None:
        self.pool = pool
        self.index = index
        self.started = started
        self.ended: Deferred[None] = Deferred()
        self._buffers: dict[int, bytes] = {1: b"", 2: b""}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffered = self._buffers.get(childFD, b"") + data
        *lines, rest = buffered.split(b"\n")
        self._buffers[childFD] = rest[-65536:]
        for line in lines:
            if line.strip():
                # twistd's own timestamp: this log adds one.
                text = _TIMESTAMP.sub("", line.decode("utf-8", "replace").rstrip(), count=1)
                log.info("worker {index}: {line}", index=self.index, line=text)

    def processEnded(self, reason: Failure) -> None:
        for childFD, rest in self._buffers.items():
            if rest.strip():
                self.childDataReceived(childFD, b"\n")
        self.pool._ended(self, reason)
        self.ended.callback(None)


class WorkerPool(Service):
    """
    Starts, supervises and stops the workers.

    @ivar workers: The running workers' pids, by index.
    """

    def __init__(
        self,
        count: int,
        command: Callable[[int], Sequence[str]],
        reactor: IReactorProcess,
        clock: IReactorTime,
        env: Mapping[str, str] | None = None,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        """
        @param count: How many workers.
        @param command: The command line of worker I{i} (L{worker_command}).
        @param env: Their environment (this process's if L{None}), plus L{SUPERVISOR_ENV}.
        @param stop_grace: Seconds between SIGTERM and SIGKILL on stop.
        """
        self.count = count
        self.command = command
        self.reactor = reactor
        self.clock = clock
        self.env = dict(os.environ if env is None else env)
        self.stop_grace = stop_grace
        self.workers: dict[int, int] = {}
        self._running: dict[int, tuple[_Worker, Any]] = {}
        self._delays: dict[int, float] = {}
        self._restarts: dict[int, IDelayedCall] = {}

    def startService(self) -> None:
        super().startService()
        log.info("starting {count} workers", count=self.count)
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        argv = list(self.command(index))
        protocol = _Worker(self, index, self.clock.seconds())
        # Unbuffered: a worker's log lines reach the supervisor's log as they are written.
        env = {**self.env, SUPERVISOR_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        try:
            process = self.reactor.spawnProcess(protocol, argv[0], argv, env, childFDs={0: "w", 1: "r", 2: "r"})
        except OSError as error:
            log.error("worker {index} cannot be started: {error}", index=index, error=error)
            self._schedule(index, young=True)
            return
        self._running[index] = (protocol, process)
        self.workers[index] = process.pid
        log.info("worker {index} started (pid {pid})", index=index, pid=process.pid)

    def _ended(self, protocol: _Worker, reason: Failure) -> None:
        index = protocol.index
        if self._running.get(index, (None,))[0] is protocol:
            del self._running[index]
            self.workers.pop(index, None)
        if not self.running:
            return
        how = "exited normally" if reason.check(ProcessDone) else str(reason.value)
        lived = self.clock.seconds() - protocol.started
        log.error("worker {index} ended after {lived:.1f} s ({how}); restarting it", index=index, lived=lived, how=how)
        self._schedule(index, young=lived < HEALTHY_SECONDS)

    def _schedule(self, index: int, young: bool) -> None:
        delay = min(self._delays.get(index, RESTART_DELAY / 2) * 2, RESTART_DELAY_MAX) if young else RESTART_DELAY
        self._delays[index] = delay
        self._restarts[index] = self.clock.callLater(delay, self._spawn, index)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for restart in self._restarts.values():
            if restart.active():
                restart.cancel()
        self._restarts.clear()
        running = list(self._running.values())
        for _, process in running:
            _signal(process, "TERM")
        if not running:
            return succeed(None)

        def kill_all() -> None:
            for _, process in running:
                _signal(process, "KILL")

        kill = self.clock.callLater(self.stop_grace, kill_all)

        def stopped(result: object) -> None:
            if kill.active():
                kill.cancel()
            log.info("every worker has stopped")

        return gatherResults([protocol.ended for protocol, _ in running]).addCallback(stopped)


def _signal(process: Any, name: str) -> None:
    with contextlib.suppress(ProcessExitedAlready):
        process.signalProcess(name)
