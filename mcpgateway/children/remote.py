"""
A C{url} service's sessions: an MCP session with a remote server, opened
with the same era handshake as a child (L{mcpgateway.children.child}) over
L{mcpgateway.mcp.remote.HttpPeer}, and returned as a L{Child} so that the
gateway, the sessions and both front doors treat it as one.

L{RemoteClient} is the service's HTTP client: one persistent connection
pool (keep-alive, at most C{max_connections} idle connections kept), TLS
verified against the system's trust store or C{ca_file}, no redirects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, TimeoutError, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from mcpgateway.children.child import Child, Era, StartFailed, handshake
from mcpgateway.config import ServiceConfig
from mcpgateway.errors import GatewayError
from mcpgateway.mcp.jsonrpc import RPCError
from mcpgateway.mcp.peer import Peer
from mcpgateway.mcp.remote import HttpPeer
from mcpgateway.mcp.stdio import NotificationHandler

__all__ = ["RemoteClient", "open_remote"]

#: Seconds an idle kept-alive connection stays open.
IDLE_CONNECTION_TIMEOUT = 60


class RemoteClient:
    """
    The HTTP client of one C{url} service.

    @ivar pool: Its connection pool.
    @ivar http: The treq client over it.
    @ivar transport: The transport the server offered (C{auto} until a session decided).
    """

    def __init__(self, config: ServiceConfig, reactor: Any) -> None:
        """
        @param config: The service (C{max_connections}, C{ca_file},
            C{handshake_timeout} bounds connecting).
        @param reactor: Connects.
        """
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = config.max_connections
        self.pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT
        self.pool.retryAutomatically = False  # a POST is not idempotent
        policy = BrowserLikePolicyForHTTPS(_trust(config.ca_file)) if config.ca_file else BrowserLikePolicyForHTTPS()
        agent = Agent(reactor, contextFactory=policy, connectTimeout=config.handshake_timeout, pool=self.pool)
        self.http = HTTPClient(agent)
        #: The transport the server offered (C{auto} until a session has decided).
        self.transport = config.transport

    def close(self) -> Deferred[None]:
        """
        Close the idle connections.
        """
        closing: Deferred[None] = self.pool.closeCachedConnections()
        return closing


def _trust(ca_file: str) -> Any:
    with open(ca_file, "rb") as f:
        text = f.read()
    marker = b"-----END CERTIFICATE-----"
    blocks = [block + marker for block in text.split(marker) if b"-----BEGIN CERTIFICATE-----" in block]
    return trustRootFromCertificates([Certificate.loadPEM(block.strip()) for block in blocks])


async def open_remote(
    client: RemoteClient,
    clock: IReactorTime,
    config: ServiceConfig,
    headers: Mapping[str, str],
    *,
    hint: Era | None,
    transport: str | None = None,
    on_notification: NotificationHandler | None = None,
    on_peer: Callable[[Peer], None] | None = None,
) -> Child:
    """
    Open an MCP session with the service's server.

    @param client: The service's HTTP client.
    @param clock: Times the handshake.
    @param config: The service (C{url}, C{transport}, timeouts, limits).
    @param headers: Every header to send (configured ones and the session's).
    @param hint: The era the server spoke before, if known.
    @param transport: The transport it offered before (C{auto} decided), else C{config.transport}.
    @param on_notification: Receives the server's notifications.
    @param on_peer: Told the peer at once (so that a stopping gateway can abort it).
    @return: The ready session, as a L{Child} (no process: C{pid} is L{None}).
    @raise StartFailed: If the server cannot be reached, times out or
        refuses the handshake (with the HTTP status of a refusal).
    """
    peer = HttpPeer(
        config.name,
        config.url,
        transport or config.transport,
        client.http,
        clock,
        headers,
        config.max_response_bytes,
        on_notification,
        send_timeout=config.call_timeout,
    )
    if on_peer is not None:
        on_peer(peer)
    started_at = clock.seconds()
    shaking = ensureDeferred(handshake(peer, clock, config.discover_timeout, hint))
    shaking.addTimeout(config.handshake_timeout, clock)
    try:
        era, info = await shaking
    except Exception as error:
        exit_info = peer.exit_info
        if isinstance(error, TimeoutError):
            reason = f"no answer to the MCP handshake within {config.handshake_timeout:g} s"
        elif isinstance(error, RPCError):
            reason = f"the MCP server refused the handshake: {error.message} ({error.code})"
        elif exit_info is not None:
            reason = f"the MCP server {exit_info.describe()}"
        elif isinstance(error, GatewayError):
            reason = error.message
        else:
            reason = f"the handshake failed: {error}"
        if peer.alive:
            peer.close(config.close_grace)
        status = error.details.get("http_status") if isinstance(error, GatewayError) else None
        raise StartFailed(reason, None, "", status if isinstance(status, int) else None) from None
    return Child(peer, clock, era, info, started_at, None, stop=peer.close)
