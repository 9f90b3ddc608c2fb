"""
One MCP server process: spawned in its own process group, handshaken in the
right protocol era, asked for tools and tool calls, and closed the way the
specification says (stdin closed, then SIGTERM, then SIGKILL to its group).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError, ensureDeferred
from twisted.internet.interfaces import IReactorProcess, IReactorTime

from mcpgateway import __version__
from mcpgateway.lib.deferreds import Shared, observe, wait_for
from mcpgateway.mcp.exits import ExitInfo
from mcpgateway.mcp.jsonrpc import RPCError
from mcpgateway.mcp.peer import Peer
from mcpgateway.mcp.spec import (
    CAPABILITIES_KEY,
    LEGACY_VERSION,
    MODERN_VERSION,
    UNSUPPORTED_PROTOCOL_VERSION,
    VERSION_KEY,
)
from mcpgateway.mcp.stdio import ChildProtocol, NotificationHandler

__all__ = ["LEGACY", "MODERN", "Child", "Era", "StartFailed", "handshake", "spawn_child"]

_MAX_TOOL_PAGES = 1000


@dataclass(frozen=True)
class Era:
    """
    The protocol era a child speaks.

    @ivar modern: C{True} for the stateless 2026-07-28 protocol.
    @ivar version: The negotiated protocol version.
    """

    modern: bool
    version: str

    @property
    def name(self) -> str:
        """
        @return: C{"modern"} or C{"legacy"}.
        """
        return "modern" if self.modern else "legacy"


MODERN = Era(True, MODERN_VERSION)
LEGACY = Era(False, LEGACY_VERSION)
_ENVELOPE = {VERSION_KEY: MODERN_VERSION, CAPABILITIES_KEY: {}}


class StartFailed(Exception):
    """
    The child did not come up as an MCP server.

    @ivar reason: One human line.
    @ivar exit_info: How the process ended, if it did.
    @ivar http_status: For a remote server, the HTTP status that refused
        the handshake, if one did.
    """

    def __init__(
        self, reason: str, exit_info: ExitInfo | None, stderr_tail: str, http_status: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_info = exit_info
        self.stderr_tail = stderr_tail
        self.http_status = http_status


class Child:
    """
    An MCP server that has completed its handshake: a child process, or a
    session with a remote server (L{mcpgateway.children.remote}).

    @ivar era: The protocol era it speaks.
    @ivar server_info: What it said about itself, if anything.
    @ivar started_at: When it was spawned, by the injected clock.
    @ivar ready_at: When its handshake completed.
    @ivar workdir: Its private working directory, or L{None}.
    """

    def __init__(
        self,
        protocol: Peer,
        clock: IReactorTime,
        era: Era,
        server_info: dict[str, Any],
        started_at: float,
        workdir: str | None,
        stop: Callable[[float], Deferred[ExitInfo]] | None = None,
    ) -> None:
        """
        @param protocol: The peer: a child's pipes, or a remote server's HTTP session.
        @param stop: Ends the peer given a grace in seconds; L{None} for a
            child process (stdin closed, SIGTERM, SIGKILL).
        """
        self.protocol = protocol
        self._stop = stop
        self.clock = clock
        self.era = era
        self.server_info = server_info
        self.started_at = started_at
        self.ready_at = clock.seconds()
        self.workdir = workdir
        self._closing: Shared[ExitInfo] | None = None

    @property
    def pid(self) -> int | None:
        """
        @return: The process id (and process group id).
        """
        return self.protocol.pid

    @property
    def alive(self) -> bool:
        """
        @return: Whether it still runs and is not being closed.
        """
        return self.protocol.alive and self._closing is None

    @property
    def closing(self) -> bool:
        """
        @return: Whether the gateway asked it to stop (so its end is no crash).
        """
        return self._closing is not None

    def when_ended(self) -> Deferred[ExitInfo]:
        """
        @return: Fires with the L{ExitInfo} once the process is gone.
        """
        return self.protocol.ended.wait()

    def request(self, method: str, params: dict[str, Any] | None = None) -> Deferred[dict[str, Any]]:
        """
        Send a request in this child's era (modern requests carry the C{_meta} envelope).

        @param method: The MCP method.
        @param params: Its params.
        @return: Fires with the result; cancel it to cancel the request.
        """
        return self.protocol.request(method, with_envelope(params) if self.era.modern else params)

    def call_tool(
        self, name: str, arguments: dict[str, Any], meta: dict[str, Any] | None = None
    ) -> Deferred[dict[str, Any]]:
        """
        @param name: The tool.
        @param arguments: Its arguments.
        @param meta: C{params._meta} entries (e.g. the W3C C{traceparent}).
        @return: Fires with the MCP C{CallToolResult}.
        """
        params: dict[str, Any] = {"name": name, "arguments": arguments}
        if meta:
            params["_meta"] = meta
        return self.request("tools/call", params)

    def list_tools(self, timeout: float) -> Deferred[list[dict[str, Any]]]:
        """
        @param timeout: Seconds for all pages together; then the request
            under way is cancelled.
        @return: Fires with every tool, following C{nextCursor} through all
            pages, or fails with L{TimeoutError}.
        """
        return ensureDeferred(self._list_tools()).addTimeout(timeout, self.clock)

    async def _list_tools(self) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(_MAX_TOOL_PAGES):
            result = await self.request("tools/list", {"cursor": cursor} if cursor else {})
            page = result.get("tools")
            if isinstance(page, list):
                tools.extend(tool for tool in page if isinstance(tool, dict))
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor or cursor in seen:
                break
            seen.add(cursor)
        return tools

    def close(self, grace: float) -> Deferred[ExitInfo]:
        """
        Stop the process: close its stdin, then after C{grace} seconds SIGTERM
        its process group, then after another C{grace} SIGKILL it.

        @param grace: Seconds to wait at each step.
        @return: Fires with the L{ExitInfo} once it has been reaped.
        """
        if self._closing is None:
            if self._stop is not None:
                self._closing = observe(self._stop(grace))
            else:
                assert isinstance(self.protocol, ChildProtocol)
                self._closing = observe(_close(self.protocol, self.clock, grace))
        return self._closing.wait()


def _close(protocol: ChildProtocol, clock: IReactorTime, grace: float) -> Deferred[ExitInfo]:
    ended = protocol.ended.wait()
    if protocol.ended.done:
        return ended
    if protocol.transport is not None:
        protocol.transport.closeStdin()
    term = clock.callLater(grace, protocol.signal_group, signal.SIGTERM)
    kill = clock.callLater(2 * grace, protocol.signal_group, signal.SIGKILL)

    def stop_timers(info: ExitInfo) -> ExitInfo:
        for timer in (term, kill):
            if timer.active():
                timer.cancel()
        return info

    return ended.addCallback(stop_timers)


def with_envelope(params: dict[str, Any] | None) -> dict[str, Any]:
    """
    Add the 2026-07-28 C{_meta} envelope to request params.

    @param params: The params, or L{None}.
    @return: New params carrying the protocol version and client capabilities.
    """
    params = dict(params or {})
    meta = params.get("_meta")
    params["_meta"] = {**meta, **_ENVELOPE} if isinstance(meta, dict) else dict(_ENVELOPE)
    return params


async def handshake(
    protocol: Peer, clock: IReactorTime, discover_timeout: float, hint: Era | None
) -> tuple[Era, dict[str, Any]]:
    """
    Decide the era as the specification's dual-era client does.

    C{server/discover} first: a DiscoverResult naming 2026-07-28 means
    modern; any error, or no answer within C{discover_timeout}, means legacy,
    so C{initialize} follows.  A probe that was merely slow is still honoured:
    if C{initialize} is refused with -32022 the late discover answer decides.

    A remembered verdict (C{hint}) skips the guessing, never the handshake:
    a legacy child gets C{initialize} at once; a modern one must answer
    C{server/discover} (its only handshake) within the whole handshake's
    timeout, so a child that dies or hangs at start is a start failure.
    """
    late = None
    if hint is None or hint.modern:
        request = protocol.request("server/discover", {"_meta": dict(_ENVELOPE)})
        probe = observe(request)
        try:
            result = await (probe.wait() if hint is not None else wait_for(probe, discover_timeout, clock))
        except RPCError:
            pass
        except TimeoutError:
            late = probe
        else:
            versions = result.get("supportedVersions")
            if isinstance(versions, list) and MODERN_VERSION in versions:
                meta = result.get("_meta")
                info = meta.get("io.modelcontextprotocol/serverInfo") if isinstance(meta, dict) else None
                return MODERN, info if isinstance(info, dict) else {}
    try:
        result = await protocol.request(
            "initialize",
            {
                "protocolVersion": LEGACY_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "mcpgateway", "version": __version__},
            },
        )
    except RPCError as error:
        if error.code == UNSUPPORTED_PROTOCOL_VERSION and late is not None:
            await late.wait()
            return MODERN, {}
        raise
    protocol.notify("notifications/initialized")
    if late is not None:
        request.cancel()  # a legacy server will never answer the probe now
    version = result.get("protocolVersion")
    info = result.get("serverInfo")
    return Era(False, version if isinstance(version, str) else LEGACY_VERSION), info if isinstance(info, dict) else {}


async def spawn_child(
    reactor: IReactorProcess,
    clock: IReactorTime,
    label: str,
    executable: str,
    args: list[str],
    env: Mapping[str, str],
    workdir: str | None,
    *,
    max_line: int,
    handshake_timeout: float,
    discover_timeout: float,
    close_grace: float,
    hint: Era | None = None,
    on_notification: NotificationHandler | None = None,
    on_process: Callable[[ChildProtocol], None] | None = None,
) -> Child:
    """
    Start an MCP server and complete its handshake.

    The command line comes from L{mcpgateway.children.sandbox.launch.build_launch}: an exec
    chain that puts the child in its own session and process group, applies
    its limits and execs the server.

    @param reactor: Spawns the process.
    @param clock: Times the handshake.
    @param label: Names it in the log.
    @param executable: The program to run (the start of the exec chain).
    @param args: Its argument vector.
    @param env: Its complete environment.
    @param workdir: Its working directory.
    @param max_line: The longest stdout line accepted.
    @param handshake_timeout: Seconds for the whole handshake.
    @param discover_timeout: Seconds to wait for C{server/discover}.
    @param close_grace: Grace used to stop it when the start fails.
    @param hint: The era this service spoke before, if known.
    @param on_notification: Receives the child's notifications.
    @param on_process: Told the protocol as soon as the process runs (e.g. so
        that a stopping gateway can end a start under way).
    @return: The ready L{Child}.
    @raise StartFailed: If it exits, times out or refuses the handshake.
    """
    protocol = ChildProtocol(label, clock, max_line, on_notification)
    started_at = clock.seconds()
    try:
        reactor.spawnProcess(protocol, executable, args, env=dict(env), path=workdir, usePTY=False)
    except OSError as error:
        raise StartFailed(f"cannot start the program: {error.strerror or error}", None, "") from None
    if on_process is not None:
        on_process(protocol)
    shaking = ensureDeferred(handshake(protocol, clock, discover_timeout, hint))
    shaking.addTimeout(handshake_timeout, clock)
    try:
        era, info = await shaking
    except Exception as error:
        if not protocol.ended.done:
            await _close(protocol, clock, close_grace)
        exit_info = protocol.exit_info
        if isinstance(error, TimeoutError):
            reason = f"no answer to the MCP handshake within {handshake_timeout:g} s"
        elif isinstance(error, RPCError):
            reason = f"the MCP server refused the handshake: {error.message} ({error.code})"
        elif exit_info is not None:
            reason = f"the MCP server {exit_info.describe()} during start-up"
        else:
            reason = f"the handshake failed: {error}"
        raise StartFailed(reason, exit_info, protocol.stderr.text()) from None
    return Child(protocol, clock, era, info, started_at, workdir)
