"""
The front door's view of its clients: a legacy client's session
(L{McpClient}) with its requests in flight (L{Call}), the stream messages go
to (L{Sink}), and the L{Context} one request is answered in.

A legacy client's C{initialize} opens a gateway session
C{mcp-<32 hex digits>}; a 2026-07-28 client has no session, and each
principal gets one gateway session C{mcp-modern.<principal>}
(L{modern_session_id}).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from mcpgateway.calls import MCP_SESSION_PREFIX
from mcpgateway.children.child import Child
from mcpgateway.policy.auth import Principal
from mcpgateway.sessions import Session

__all__ = ["Call", "Context", "McpClient", "Sink", "modern_session_id"]

_MAX_SESSION_ID = 128


class Sink(Protocol):
    """
    Somewhere to send messages to the client: the stream answering one of
    its requests, or its GET stream.
    """

    @property
    def open(self) -> bool:
        """
        Whether messages can still be sent.
        """

    def send(self, message: dict[str, Any]) -> bool:
        """
        Send one JSON-RPC message.

        @return: Whether it was written.
        """


def modern_session_id(principal: Principal) -> str:
    """
    @return: The gateway session serving C{principal}'s 2026-07-28 requests:
        C{mcp-modern.<name>}, at most 128 characters of C{A-Z a-z 0-9 _ . -};
        a name with other characters, or too long, is followed by (or
        shortened to end with) a hash of it, so two principals never share one.
        REST calls cannot name it (L{mcpgateway.calls.rest_session_id}).
    """
    prefix = f"{MCP_SESSION_PREFIX}modern."
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", principal.name)
    if safe != principal.name or len(prefix) + len(safe) > _MAX_SESSION_ID:
        digest = hashlib.sha256(principal.name.encode()).hexdigest()[:16]
        safe = f"{safe[: _MAX_SESSION_ID - len(prefix) - len(digest) - 1]}.{digest}"
    return prefix + safe


def _id_key(request_id: Any) -> tuple[str, Any]:
    return (type(request_id).__name__, request_id)


class Call:
    """
    A client request being answered.

    @ivar request_id: The client's id.
    @ivar sink: Its response stream.
    @ivar task: What answers it (cancelled when the client cancels it).
    @ivar children: Children it is waiting on now.
    @ivar cancelled: Whether the client cancelled it.
    """

    def __init__(self, request_id: Any, sink: Sink) -> None:
        self.request_id = request_id
        self.sink = sink
        self.task: Deferred[Any] | None = None
        self.children: list[Child] = []
        self.cancelled = False


class McpClient:
    """
    A legacy (initialize-handshake) MCP session.

    @ivar id: Its C{Mcp-Session-Id}, also the gateway session's id.
    @ivar principal: Who opened it.
    @ivar scope: The one service it sees, or L{None} for all.
    @ivar version: The negotiated protocol version.
    @ivar capabilities: What the client declared.
    @ivar stream: Its GET stream, if open.
    @ivar calls: Its requests in flight, by id.
    @ivar asks: Child requests sent to it, waiting for its answer, by the
        id the gateway gave them.
    """

    def __init__(
        self, session_id: str, principal: Principal, scope: str | None, version: str, capabilities: dict[str, Any]
    ) -> None:
        self.id = session_id
        self.principal = principal
        self.scope = scope
        self.version = version
        self.capabilities = capabilities
        self.stream: Sink | None = None
        self.calls: dict[tuple[str, Any], Call] = {}
        self.asks: dict[int, Deferred[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self.closed = False

    def begin(self, request_id: Any, sink: Sink) -> Call:
        """
        Register a request in flight.
        """
        call = self.calls[_id_key(request_id)] = Call(request_id, sink)
        return call

    def end(self, call: Call) -> None:
        """
        Forget a request that was answered.
        """
        if self.calls.get(_id_key(call.request_id)) is call:
            del self.calls[_id_key(call.request_id)]

    def cancel(self, request_id: Any) -> bool:
        """
        The client's C{notifications/cancelled}: cancel that request.

        @return: Whether it was in flight.
        """
        if type(request_id) not in (int, str):
            return False  # no request has such an id (and a list or an object is not hashable)
        call = self.calls.get(_id_key(request_id))
        if call is None or call.task is None:
            return False
        call.cancelled = True
        call.task.cancel()
        return True

    def next_ask_id(self) -> int:
        """
        @return: A fresh id for a request to the client.
        """
        return next(self._ids)


@dataclass
class Context:
    """
    What one client request is answered in.

    @ivar principal: The caller.
    @ivar scope: The service of a C{/services/<name>/mcp} endpoint, or L{None}.
    @ivar modern: Whether the client speaks 2026-07-28.
    @ivar session: The gateway session whose children serve it.
    @ivar sink: The stream answering it (progress goes there).
    @ivar client: The legacy session, or L{None} for a modern client.
    @ivar call: The request in flight (legacy), or L{None}.
    @ivar address: The client's IP address (C{"-"} if unknown).
    """

    principal: Principal
    scope: str | None
    modern: bool
    session: Session
    sink: Sink
    client: McpClient | None = None
    call: Call | None = None
    address: str = "-"
