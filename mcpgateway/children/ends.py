"""
How a service's children ended (L{mcpgateway.children.service}): the
crashes, the children a sandbox limit stopped (counted, logged, and reported
as security events), and what the ended ones wrote to stderr.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from typing import Any

from mcpgateway.children.child import Child
from mcpgateway.children.sandbox.limits import explain_exit
from mcpgateway.config import ServiceConfig
from mcpgateway.mcp.exits import ExitInfo
from mcpgateway.mcp.stdio import ChildProtocol
from mcpgateway.observe.logs import logger
from mcpgateway.observe.security import security_event

__all__ = ["ChildEnds"]

log = logger("mcpgateway.service")

#: A child ended by one of these (CPU time, file size, or a kill it did not
#: get from us, e.g. the kernel's OOM killer) is reported as a security event.
_LIMIT_SIGNALS = frozenset({signal.SIGXCPU, signal.SIGXFSZ, signal.SIGKILL})


class ChildEnds:
    """
    The ends of one service's children.

    @ivar crashes: Children that ended without the gateway asking them to.
    @ivar limit_stops: Children stopped by a sandbox limit, by limit
        (C{pids}, C{cpu}, ...).
    """

    def __init__(self, config: ServiceConfig) -> None:
        """
        @param config: The service's configuration (its name and sandbox policy).
        """
        self._config = config
        self.crashes = 0
        self.limit_stops: dict[str, int] = {}
        self._ended_stderr_bytes = 0

    def stderr_bytes(self, live: Iterable[Child]) -> int:
        """
        @param live: The service's live children.
        @return: Bytes its children, C{live} and ended, wrote to stderr.
        """
        return self._ended_stderr_bytes + sum(_stderr_bytes(child) for child in live)

    def explain(self, info: ExitInfo, cgroup: str | None) -> dict[str, Any] | None:
        """
        Tell what stopped a child that has just exited (before its cgroup is
        removed): a sandbox limit is counted and logged.

        @param info: How it exited.
        @param cgroup: Its cgroup, if it has one.
        @return: The limit that stopped it (L{explain_exit}), or L{None}.
        """
        cause = explain_exit(info, self._config.sandbox, self._config.name, cgroup)
        if cause is not None:
            self.limit_stops[cause["limit"]] = self.limit_stops.get(cause["limit"], 0) + 1
            log.warn(
                "{service}: a child was stopped by a sandbox limit: {text}",
                service=self._config.name,
                limit=cause["limit"],
                key=cause["key"],
                text=cause["message"],
            )
        return cause

    def record(self, info: ExitInfo, child: Child) -> None:
        """
        Count a child's end: a crash unless it was closed; a security event
        if a limit (or a kill it did not get from us) stopped it.

        @param info: How it ended.
        @param child: The child.
        """
        if not child.closing and (info.signal in _LIMIT_SIGNALS or info.cause is not None):
            security_event(
                "child_limit",
                address="-",
                principal=None,
                route=f"service {self._config.name}",
                pid=child.pid,
                signal=info.signal,
                how=info.describe(),
                **({"limit": info.cause["limit"], "key": info.cause["key"]} if info.cause else {}),
            )
        self._ended_stderr_bytes += _stderr_bytes(child)
        if not child.closing:
            self.crashes += 1


def _stderr_bytes(child: Child) -> int:
    """
    @return: What a child process wrote to stderr (a remote server: 0).
    """
    return child.protocol.stderr.total_bytes if isinstance(child.protocol, ChildProtocol) else 0
