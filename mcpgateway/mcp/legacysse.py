"""
The legacy HTTP+SSE transport (MCP 2024-11-05) under one
L{mcpgateway.mcp.remote.HttpPeer}: a GET opens an event stream whose first
C{endpoint} event names where to POST (on the same origin, else the server
is refused); each request is a POST there, and its answer comes on the
stream, as do the server's notifications and requests.

The stream is opened once, by the first message sent; when it ends, the
session ends.  L{SseTransport} knows the stream and the requests waiting on it;
what a message means and how an exchange fails are its peer's
(L{SsePeer}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from mcpgateway.errors import ChildFailed
from mcpgateway.lib.deferreds import Shared
from mcpgateway.mcp.exits import ChildExited, ExitInfo
from mcpgateway.mcp.httpbody import BodyReader, cancelled, describe, drop, read_body
from mcpgateway.mcp.httpheaders import as_headers, content_type

__all__ = ["SsePeer", "SseTransport", "Waiting"]

#: Finds the request a response answers, by the response's C{id}.
Waiting = Callable[[object], "Deferred[dict[str, Any]] | None"]


class SsePeer(Protocol):
    """
    What L{SseTransport} needs of the peer it carries.

    @ivar label: Names the service in errors.
    @ivar url: The server's SSE endpoint (the GET's).
    @ivar exit_info: How the session ended, or L{None} while it goes on.
    """

    label: str
    url: str
    exit_info: ExitInfo | None

    async def post(self, url: str, message: dict[str, Any], body: bytes) -> IResponse:
        """
        POST one message; the answer's body is left unread.
        """

    async def body(self, reader: BodyReader) -> bytes:
        """
        The whole body C{reader} reads, its failures as the session's.
        """

    def bad_status(self, response: IResponse, data: bytes) -> Exception:
        """
        The error an answer that is not the one expected stands for.
        """

    def gone(self, reason: str) -> ChildExited:
        """
        End the session: the server cannot go on with it.
        """

    def received(self, text: str, waiting: Waiting) -> None:
        """
        One JSON-RPC message from the server; a response goes to C{waiting}'s request.
        """


class SseTransport:
    """
    The event stream of one HTTP+SSE session, and the requests waiting for
    their answers on it.

    @ivar endpoint: Where to POST, once the stream has named it.
    """

    def __init__(self, peer: SsePeer, client: HTTPClient, headers: dict[str, list[str]], max_response: int) -> None:
        """
        @param peer: The session it carries.
        @param client: Sends the GET (the POSTs are the peer's).
        @param headers: Sent with the GET (configured and per session).
        @param max_response: The largest event, in bytes.
        """
        self._peer = peer
        self._client = client
        self._headers = headers
        self._max = max_response
        self.endpoint: str | None = None
        self._stream: BodyReader | None = None
        self._opening: Shared[None] | None = None
        #: Requests waiting for an answer on the stream, by id.
        self._pending: dict[int, Deferred[dict[str, Any]]] = {}
        #: The GET opening the event stream, until it is answered.
        self._getting: Deferred[Any] | None = None

    async def opened(self) -> str:
        """
        Open the event stream (the first caller does; the others wait for it).

        @return: The endpoint to POST to.
        @raise ChildExited: If the server is gone (or went before it named one).
        @raise ChildFailed: If it answered the GET with no event stream.
        """
        if self._opening is None:
            self._opening = Shared()
            Deferred.fromCoroutine(self._open()).addBoth(self._opening.fire)
        await self._opening.wait()
        assert self.endpoint is not None
        return self.endpoint

    async def _open(self) -> None:
        peer = self._peer
        headers = dict(self._headers)
        headers["Accept"] = ["text/event-stream"]
        # Cancelled if the session ends first (a handshake timed out): a
        # late answer would otherwise hold an event stream open for ever.
        self._getting = self._client.request(
            "GET", peer.url, headers=as_headers(headers), allow_redirects=False, unbuffered=True
        )
        try:
            response: IResponse = (await self._getting).original
        except Exception as error:
            if cancelled(error):
                raise CancelledError() from None
            raise peer.gone(f"became unreachable ({describe(error)})") from None
        if peer.exit_info is not None:
            drop(response)
            raise ChildExited(peer.exit_info)
        if response.code != 200 or content_type(response) != "text/event-stream":
            data = b""
            if not 300 <= response.code < 400:
                data = await peer.body(read_body(response, 4096))
            raise peer.bad_status(response, data)
        endpoint: Deferred[str] = Deferred()

        def event(kind: str, data: str) -> None:
            if kind == "endpoint" and not endpoint.called:
                target = urljoin(peer.url, data.strip())
                if urlsplit(target)[:2] != urlsplit(peer.url)[:2]:
                    endpoint.errback(ChildFailed(f"the {peer.label} server named an endpoint on another origin"))
                else:
                    endpoint.callback(target)
            elif kind == "message":
                peer.received(data, self._waiting)

        self._stream = read_body(response, self._max, event)
        self._stream.done.addBoth(self._ended, endpoint)
        self.endpoint = await endpoint

    def _waiting(self, request_id: object) -> Deferred[dict[str, Any]] | None:
        return self._pending.pop(request_id, None) if type(request_id) is int else None

    def _ended(self, outcome: Any, endpoint: Deferred[str]) -> None:
        if self._peer.exit_info is not None:
            return
        reason = (
            f"dropped its event stream ({describe(outcome.value)})"
            if isinstance(outcome, Failure)
            else "closed its event stream"
        )
        error = self._peer.gone(reason)
        if not endpoint.called:
            endpoint.errback(error)

    async def request(self, request_id: int, message: dict[str, Any], body: bytes) -> dict[str, Any]:
        """
        Send a request (opening the stream first) and wait for its answer on the stream.

        @param request_id: The request's id, which its answer repeats.
        @param message: The request.
        @param body: C{message} as JSON.
        @return: Its result.
        """
        endpoint = await self.opened()
        answer: Deferred[dict[str, Any]] = Deferred()
        self._pending[request_id] = answer
        try:
            response = await self._peer.post(endpoint, message, body)
            data = await self._peer.body(read_body(response, 64 * 1024))
            if not 200 <= response.code < 300:
                raise self._peer.bad_status(response, data)
            return await answer
        finally:
            self._pending.pop(request_id, None)

    def end(self, info: ExitInfo) -> None:
        """
        The session is over: drop the stream (or the GET opening it), fail
        the requests waiting on it with L{ChildExited}.
        """
        if self._stream is not None:
            self._stream.stop()
        if self._getting is not None and not self._getting.called:
            self._getting.cancel()
        pending, self._pending = self._pending, {}
        for waiting in pending.values():
            if not waiting.called:
                waiting.errback(ChildExited(info))
