"""
The JSON-RPC peer that talks to one remote MCP server over HTTP: the
counterpart of L{mcpgateway.mcp.stdio.ChildProtocol} for a C{url} service,
with the same hooks (C{request_handler}, C{progress_routes}, C{listeners})
and the same way of ending (L{ChildExited} for every request waiting).

Transports:
  - C{streamable-http}: each message is a POST to the URL; the answer is
    JSON or an event stream (progress notifications and server requests
    first, the response last).  In the 2026-07-28 era every request carries
    C{MCP-Protocol-Version}, C{Mcp-Method} and C{Mcp-Name}; in the legacy
    era the C{Mcp-Session-Id} minted at C{initialize} and the negotiated
    C{MCP-Protocol-Version} follow every request, and L{HttpPeer.close}
    ends the session with DELETE (L{mcpgateway.mcp.httpheaders} says
    which headers).
  - C{sse} (2024-11-05): a GET opens an event stream whose first
    C{endpoint} event names where to POST; answers come on the stream
    (L{mcpgateway.mcp.legacysse.SseTransport}, which HttpPeer drives).
  - C{auto}: Streamable HTTP; if the very first POST is answered 404 or 405,
    the legacy SSE transport, as the specification's backwards-compatibility
    section says.

Nothing is followed: a redirect is a bad answer (the configured URL is the
one trusted).  Every body and event is bounded by C{max_response}
(L{mcpgateway.mcp.httpbody}).  It knows nothing of MCP eras beyond the
headers; the handshake is L{mcpgateway.children.child}'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from mcpgateway.errors import ChildFailed
from mcpgateway.lib.deferreds import Shared, observe
from mcpgateway.lib.jsontext import dumps
from mcpgateway.lib.redact import SECRET_VALUES
from mcpgateway.mcp.exits import ChildExited, ExitInfo, Unreachable
from mcpgateway.mcp.httpbody import BodyReader, TooLarge, cancelled, describe, read_body
from mcpgateway.mcp.httpheaders import as_headers, content_type, delete_headers, header_value, post_headers
from mcpgateway.mcp.jsonrpc import RPCError, decode, deliver, error_member, settle
from mcpgateway.mcp.legacysse import SseTransport, Waiting
from mcpgateway.mcp.spec import INVALID_REQUEST, METHOD_NOT_FOUND
from mcpgateway.mcp.stdio import NotificationHandler, ProgressRoute, RequestHandler
from mcpgateway.observe.logs import logger

__all__ = ["HttpPeer"]


class HttpPeer:
    """
    One MCP session with a remote server.

    @ivar ended: Fired with an L{ExitInfo} once the session is over (closed
        by the gateway, or the server gone).
    @ivar session_id: The C{Mcp-Session-Id} the server minted, if any.
    @ivar transport: C{streamable-http} or C{sse} (once C{auto} has decided).
    """

    pid = None

    def __init__(
        self,
        label: str,
        url: str,
        transport: str,
        client: HTTPClient,
        clock: IReactorTime,
        headers: Mapping[str, str],
        max_response: int,
        on_notification: NotificationHandler | None = None,
        send_timeout: float = 30.0,
    ) -> None:
        """
        @param label: Names the service in the log.
        @param url: The server's MCP endpoint (the SSE endpoint for C{sse}).
        @param transport: C{auto}, C{streamable-http} or C{sse}.
        @param client: Sends the requests (its pool keeps connections alive).
        @param clock: Times the DELETE at close.
        @param headers: Sent with every request (configured and per session).
        @param max_response: The largest answer or event, in bytes.
        @param on_notification: Told each notification of the server.
        @param send_timeout: Seconds a notification or a reply to the
            server may take to be sent (the service's C{call_timeout}).
        """
        self.log = logger(f"mcpgateway.child.{label}")
        self.label = label
        self.url = url
        self.transport = transport
        self._client = client
        self._clock = clock
        self._headers = {name: [value] for name, value in headers.items()}
        self._max = max_response
        self._on_notification = on_notification
        self.request_handler: RequestHandler | None = None
        self.progress_routes: dict[str | int, ProgressRoute] = {}
        self.listeners: list[NotificationHandler] = []
        self.ended: Shared[ExitInfo] = Shared()
        self.exit_info: ExitInfo | None = None
        self.session_id: str | None = None
        self._version: str | None = None
        self._next_id = 1
        self._exchanged = False
        #: For C{sse}: the event stream, and the requests waiting for an answer on it.
        self._sse = SseTransport(self, client, self._headers, max_response)
        self._exchanges: set[Deferred[Any]] = set()
        self._initialized: Shared[None] | None = None
        #: Streamable HTTP answers still streaming (events after the response go to the hooks).
        self._streams: set[BodyReader] = set()
        #: Notifications and replies being sent, and how long each may take.
        self._background: set[Deferred[None]] = set()
        self._send_timeout = send_timeout

    @property
    def alive(self) -> bool:
        """
        @return: Whether the session may still be sent requests.
        """
        return self.exit_info is None

    # -- sending ---------------------------------------------------------------

    def request(self, method: str, params: dict[str, Any] | None = None) -> Deferred[dict[str, Any]]:
        """
        Send a request; cancelling the returned L{Deferred} drops its exchange
        (and, in the legacy era, sends C{notifications/cancelled}).

        @return: Fires with the result, or fails with L{RPCError},
            L{ChildExited} (the server is gone), L{ChildFailed} (a bad
            answer) or L{ValueError} (params that are not JSON).
        """
        if self.exit_info is not None:
            return fail(ChildExited(self.exit_info))
        request_id = self._next_id
        self._next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        try:
            body = dumps(message).encode()
        except (ValueError, TypeError, RecursionError) as error:
            return fail(ValueError(f"the message cannot be sent as JSON: {error}"))
        work = Deferred.fromCoroutine(self._request(request_id, message, body))
        self._exchanges.add(work)
        work.addBoth(self._exchanged_one, work)

        def cancelling(failure: Failure) -> Failure:
            if failure.check(CancelledError) and self.alive and self._version is not None:
                self.notify("notifications/cancelled", {"requestId": request_id, "reason": "cancelled by the gateway"})
            return failure

        return work.addErrback(cancelling)

    def _exchanged_one(self, outcome: Any, work: Deferred[Any]) -> Any:
        self._exchanges.discard(work)
        return outcome

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """
        Send a notification (in the background; a failure is logged).
        """
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self._send_background(message)

    def _send_background(self, message: dict[str, Any]) -> None:
        if self.exit_info is not None:
            return
        try:
            body = dumps(message).encode()
        except (ValueError, TypeError, RecursionError) as error:
            self.log.warn("could not send a {what} message: {error}", what=message.get("method", "reply"), error=error)
            return
        sending = Deferred.fromCoroutine(self._post_only(message, body))
        # Bounded, and dropped when the session ends: a stalled server must
        # not collect a hanging connection per notification (one per timed-out call).
        sending.addTimeout(self._send_timeout, self._clock)
        self._background.add(sending)
        sending.addBoth(self._sent, sending)
        sending.addErrback(
            lambda failure: self.log.info(
                "sending {what} failed: {error}", what=message.get("method", "a reply"), error=describe(failure.value)
            )
        )
        if message.get("method") == "notifications/initialized" and not sending.called:
            # Requests wait for it: the server must see it before them.
            self._initialized = observe(sending)

    def _sent(self, outcome: Any, sending: Deferred[None]) -> Any:
        self._background.discard(sending)
        return outcome

    async def _post_only(self, message: dict[str, Any], body: bytes) -> None:
        url = await self._sse.opened() if self.transport == "sse" else self.url
        response = await self.post(url, message, body)
        await read_body(response, self._max).done

    async def post(self, url: str, message: dict[str, Any], body: bytes) -> IResponse:
        """
        POST one message with the session's headers; a redirect, or a 404
        for the session, is not returned.

        @param url: The MCP endpoint (or the endpoint the SSE stream named).
        @return: The answer, its body unread.
        @raise Unreachable: If nothing was sent (connection refused, DNS).
        @raise ChildExited: If the connection failed, or the server ended the session.
        @raise ChildFailed: If the answer is a redirect.
        """
        try:
            response: IResponse = (
                await self._client.request(
                    "POST",
                    url,
                    data=body,
                    headers=as_headers(post_headers(self._headers, message, self.session_id, self._version)),
                    allow_redirects=False,
                    unbuffered=True,
                )
            ).original
        except Exception as error:  # refused, reset, DNS, TLS verification...
            if cancelled(error):
                raise CancelledError() from None
            gone = self.gone(f"became unreachable ({describe(error)})")
            if isinstance(error, ConnectError | DNSLookupError):
                raise Unreachable(gone.info) from None  # nothing was sent
            raise gone from None
        if 300 <= response.code < 400:
            read_body(response, 0).done.addErrback(lambda _: None)
            raise ChildFailed(
                f"the {self.label} server answered HTTP {response.code}, a redirect (the gateway follows none)",
                service=self.label,
            )
        if response.code == 404 and self.session_id is not None and message.get("method") != "initialize":
            read_body(response, 0).done.addErrback(lambda _: None)
            raise self.gone("ended the MCP session (HTTP 404 for its Mcp-Session-Id)")
        return response

    async def _request(self, request_id: int, message: dict[str, Any], body: bytes) -> dict[str, Any]:
        if self._initialized is not None:
            await self._initialized.wait()
            self._initialized = None
        first = not self._exchanged
        self._exchanged = True
        if self.transport != "sse":
            try:
                return await self._streamable(request_id, message, body, fallback=first and self.transport == "auto")
            except _UseSse:
                self.log.info("{url}: no Streamable HTTP (HTTP 404/405); trying HTTP+SSE", url=self.url)
                self.transport = "sse"
        if message.get("method") == "server/discover":
            # HTTP+SSE is a 2024-11-05 transport: its sessions begin with initialize.
            raise RPCError(METHOD_NOT_FOUND, "server/discover is not sent over HTTP+SSE")
        result = await self._sse.request(request_id, message, body)
        if message.get("method") == "initialize":
            version = result.get("protocolVersion")
            self._version = version if isinstance(version, str) else None
        return result

    # -- Streamable HTTP ----------------------------------------------------------

    async def _streamable(
        self, request_id: int, message: dict[str, Any], body: bytes, fallback: bool
    ) -> dict[str, Any]:
        response = await self.post(self.url, message, body)
        if fallback and response.code in (404, 405):
            read_body(response, 0).done.addErrback(lambda _: None)
            raise _UseSse()
        if self.transport == "auto" and 200 <= response.code < 300:
            self.transport = "streamable-http"
        kind = content_type(response)
        answer: Deferred[dict[str, Any]] = Deferred()

        def waiting(got: object) -> Deferred[dict[str, Any]] | None:
            return answer if got == request_id else None

        if response.code < 300 and kind == "text/event-stream":
            reader = read_body(
                response, self._max, lambda event, data: self.received(data, waiting) if event == "message" else None
            )
            # Dropped when the session ends, should the server keep it open.
            self._streams.add(reader)
            reader.done.addBoth(self._stream_done, reader)
            reader.done.addBoth(self._stream_ended, answer, reader)
            answer.addBoth(self._keep_reading, reader)
        else:
            data = await self.body(read_body(response, self._max))
            if kind != "application/json" or not data:
                raise self.bad_status(response, data)
            self.received(data.decode("utf-8", "replace"), waiting)
            if not answer.called:
                raise self.bad_status(response, data)
        result = await answer
        if message.get("method") == "initialize":
            self.session_id = header_value(response, b"mcp-session-id") or self.session_id
            version = result.get("protocolVersion")
            self._version = version if isinstance(version, str) else None
        return result

    async def body(self, reader: BodyReader) -> bytes:
        """
        @param reader: Reads an answer's body whole.
        @return: The whole body.
        @raise ChildFailed: If it is over the limit.
        @raise ChildExited: If the connection dropped.
        """
        try:
            return await reader.done
        except TooLarge as error:
            raise ChildFailed(f"the {self.label} server sent {error}", service=self.label) from None
        except Exception as error:
            if cancelled(error):
                raise CancelledError() from None
            raise self.gone(f"dropped the connection during an answer ({describe(error)})") from None

    def _stream_done(self, outcome: Any, reader: BodyReader) -> Any:
        self._streams.discard(reader)
        return outcome

    def _keep_reading(self, outcome: Any, reader: BodyReader) -> Any:
        # The answer is in: later events of the stream (if any) still go to
        # the hooks; the stream itself ends when the server ends it.
        if isinstance(outcome, Failure) and outcome.check(CancelledError):
            reader.stop()
        return outcome

    def _stream_ended(self, outcome: Any, answer: Deferred[dict[str, Any]], reader: BodyReader) -> None:
        if answer.called:
            return
        if isinstance(outcome, Failure):
            if outcome.check(TooLarge):
                answer.errback(ChildFailed(f"the {self.label} server sent {outcome.value}", service=self.label))
            else:
                answer.errback(self.gone(f"dropped the connection during an answer ({describe(outcome.value)})"))
        else:
            answer.errback(ChildFailed(f"the {self.label} server ended its event stream without an answer"))

    def bad_status(self, response: IResponse, data: bytes) -> Exception:
        """
        @param response: An answer that is not the one expected.
        @param data: Its body (or its start).
        @return: The error it stands for: L{RPCError} for a 4xx that refuses
            the request, else L{ChildFailed} with the HTTP status.
        """
        # Redacted before the cut: an upstream quoting a credential must not
        # leave the piece of it the cut would keep (1 MiB holds any secret).
        text = SECRET_VALUES.head(data[: 1 << 20].decode("utf-8", "replace"), 200).strip()
        if 400 <= response.code < 500 and response.code not in (401, 403):
            return RPCError(INVALID_REQUEST, f"HTTP {response.code} from the server: {text}")
        return ChildFailed(
            f"the {self.label} server answered HTTP {response.code} ({content_type(response) or 'no content type'})"
            + (f": {text}" if text else ""),
            service=self.label,
            http_status=response.code,
        )

    # -- receiving --------------------------------------------------------------------

    def received(self, text: str, waiting: Waiting) -> None:
        """
        One JSON-RPC message from the server: a response, a notification, or
        a request of its own.

        @param text: The message.
        @param waiting: Finds the request a response answers, by its C{id}
            (the one this POST sent, or one waiting on the SSE stream).
        """
        try:
            message = decode(text)
        except (ValueError, RecursionError):
            self.log.warn("skipped a message that is not JSON: {text!r}", text=SECRET_VALUES.head(text, 200))
            return
        if not isinstance(message, dict):
            self.log.warn("skipped a JSON value that is not an object: {text!r}", text=SECRET_VALUES.head(text, 200))
            return
        method = message.get("method")
        if isinstance(method, str):
            params = message.get("params")
            if "id" in message:
                self._answer(message["id"], method, params if isinstance(params, dict) else {})
            else:
                self._notified(method, params if isinstance(params, dict) else {})
            return
        got = message.get("id")
        request = waiting(got)
        if request is None or request.called:
            self.log.debug("dropped a response to no pending request: {id!r}", id=got)
            return
        settle(request, message)

    def _notified(self, method: str, params: dict[str, Any]) -> None:
        deliver(method, params, self.progress_routes, [self._on_notification, *self.listeners])

    def _answer(self, request_id: Any, method: str, params: dict[str, Any]) -> None:
        if self.request_handler is not None:
            answer = self.request_handler(method, params)
            if answer is not None:
                answer.addCallbacks(
                    lambda result: self._send_background({"jsonrpc": "2.0", "id": request_id, "result": result}),
                    lambda failure: self._send_background(
                        {"jsonrpc": "2.0", "id": request_id, "error": error_member(failure)}
                    ),
                )
                return
        if method == "ping":
            self._send_background({"jsonrpc": "2.0", "id": request_id, "result": {}})
            return
        self.log.info("answered the server's request {method!r} with -32601", method=method)
        self._send_background(
            {
                "jsonrpc": "2.0",
                "id": request_id,
                "error": {"code": METHOD_NOT_FOUND, "message": f"{method} is not available through this gateway"},
            }
        )

    # -- ending -------------------------------------------------------------------------

    def gone(self, reason: str) -> ChildExited:
        """
        The server cannot go on with this session: end it, fail every request.

        @return: The L{ChildExited} to raise.
        """
        if self.exit_info is None:
            self.log.warn("{url}: {reason}", url=self.url, reason=reason)
            self._end(ExitInfo(None, None, reason, ""))
        assert self.exit_info is not None
        return ChildExited(self.exit_info)

    def _end(self, info: ExitInfo) -> None:
        self.exit_info = info
        for stream in list(self._streams):
            stream.stop()
        for sending in list(self._background):
            sending.cancel()
        self._sse.end(info)
        self.ended.fire(info)

    def abort(self, reason: str) -> None:
        """
        End the session now without telling the server (the gateway stops).
        """
        if self.exit_info is None:
            self._end(ExitInfo(None, None, reason, ""))
            for work in list(self._exchanges):
                work.cancel()

    def close(self, grace: float) -> Deferred[ExitInfo]:
        """
        End the session: DELETE it (Streamable HTTP with an C{Mcp-Session-Id}),
        or drop the event stream (C{sse}).

        @param grace: Seconds the DELETE may take.
        @return: Fires with the L{ExitInfo} once done.
        """
        if self.exit_info is not None:
            return self.ended.wait()
        return Deferred.fromCoroutine(self._close(grace))

    async def _close(self, grace: float) -> ExitInfo:
        session_id = self.session_id
        if session_id is not None and self.transport != "sse":
            headers = delete_headers(self._headers, session_id, self._version)
            # The grace bounds the whole exchange, body included, and the
            # body is read bounded: a server that stalls or floods its answer
            # to the DELETE cannot hold the close (and a gateway's stop).
            deleting = Deferred.fromCoroutine(self._delete(headers))
            deleting.addTimeout(grace, self._clock)
            try:
                await deleting
            except Exception as error:
                self.log.info("{url}: DELETE of the MCP session failed: {e}", url=self.url, e=describe(error))
        if self.exit_info is None:
            self._end(ExitInfo(0, None, "closed by the gateway", ""))
        assert self.exit_info is not None
        return self.exit_info

    async def _delete(self, headers: dict[str, list[str]]) -> None:
        response: IResponse = (
            await self._client.request(
                "DELETE", self.url, headers=as_headers(headers), allow_redirects=False, unbuffered=True
            )
        ).original
        await read_body(response, 64 * 1024).done


class _UseSse(Exception):
    """
    C{auto}: the server has no Streamable HTTP endpoint here.
    """
