"""
What the gateway needs of the JSON-RPC peer under an MCP server session,
whatever carries it: L{mcpgateway.mcp.stdio.ChildProtocol} (a child's pipes)
or L{mcpgateway.mcp.remote.HttpPeer} (a remote server's HTTP transport).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred

from mcpgateway.lib.deferreds import Shared
from mcpgateway.mcp.exits import ExitInfo
from mcpgateway.mcp.stdio import NotificationHandler, ProgressRoute, RequestHandler

__all__ = ["Peer"]


class Peer(Protocol):
    """
    A JSON-RPC peer that is an MCP server.

    @ivar ended: Fired with an L{ExitInfo} once the peer is gone.
    @ivar pid: The process id, or L{None} for a remote server.
    @ivar request_handler: Consulted first for each request of the server.
    @ivar progress_routes: C{notifications/progress} by the token the gateway minted.
    @ivar listeners: Told of every other notification.
    """

    ended: Shared[ExitInfo]
    request_handler: RequestHandler | None
    progress_routes: dict[str | int, ProgressRoute]
    listeners: list[NotificationHandler]

    @property
    def pid(self) -> int | None:
        """
        The process id, or L{None}.
        """

    @property
    def alive(self) -> bool:
        """
        Whether it may be sent requests.
        """

    def request(self, method: str, params: dict[str, Any] | None = None) -> Deferred[dict[str, Any]]:
        """
        Send a request; cancel the result to cancel it.
        """

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """
        Send a notification.
        """

    def abort(self, reason: str) -> None:
        """
        End it now (the gateway stops), failing its requests.
        """
