"""
Streamable HTTP, the MCP transport of C{/mcp} and C{/services/<name>/mcp},
in both protocol eras.  The MCP logic lives in L{mcpgateway.front.server}.

Every request: a foreign C{Origin} gets 403 (before authentication); then the
REST API's authentication (401 with C{WWW-Authenticate}) and rate limits
(group C{mcp}).  C{MCP-Protocol-Version} picks the era: 2026-07-28 is the
modern one, a 2024-11-05..2025-11-25 value or none the legacy one, anything
else is answered 400.

Legacy (2025-03-26 .. 2025-11-25):
  - C{POST} an C{initialize} request: a new session, its id in the
    C{Mcp-Session-Id} response header.  Every later message names it: 400
    without, 404 for an unknown or ended session.
  - C{POST} a request: answered C{application/json}, or C{text/event-stream}
    as soon as anything must reach the client before the result (progress,
    a child's sampling request...).  C{POST} a notification or a response:
    202.  C{Accept} must cover both C{application/json} and
    C{text/event-stream} (406), the body must be C{application/json} (415)
    holding one JSON-RPC message (400).
  - C{GET} (C{Accept: text/event-stream}, else 406): the session's stream of
    server-initiated messages (C{list_changed}...); a new one replaces the old.
    A comment is sent every 15 s, and marks the session used: a client that
    keeps its stream open keeps its session.
  - C{DELETE}: ends the session and stops its children.

Modern (2026-07-28): C{POST} only (C{GET}/C{DELETE}: 405), no session; the
C{_meta} envelope is required (-32602), the C{MCP-Protocol-Version},
C{Mcp-Method} and C{Mcp-Name} headers must match the body (-32020), JSON
errors carry the status of the specification's table (400, 404 for -32601).
A notification is acknowledged with 202 and dropped; closing the response
stream cancels the request.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred
from twisted.web.iweb import IRequest

from mcpgateway.calls import ToolCalls
from mcpgateway.errors import GatewayError, ServiceUnavailable, retry_after_header
from mcpgateway.front.client import Context, McpClient
from mcpgateway.front.errors import McpError, gateway_error
from mcpgateway.front.server import McpFront
from mcpgateway.gateway import Gateway
from mcpgateway.http.forward import Fleet
from mcpgateway.http.guard import Guard, client_address
from mcpgateway.http.streams import (
    SESSION_HEADER,
    EventStream,
    Exchange,
    accepts,
    decode_header_value,
    error_message,
    header,
    json_response,
)
from mcpgateway.lib.jsontext import JSONTextError, parse
from mcpgateway.mcp.spec import (
    CAPABILITIES_KEY,
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LEGACY_VERSIONS,
    METHOD_NOT_FOUND,
    MODERN_VERSION,
    MODERN_VERSIONS,
    PARSE_ERROR,
    REQUEST_CANCELLED,
    UNSUPPORTED_PROTOCOL_VERSION,
    VERSION_KEY,
)
from mcpgateway.names import SERVICE_NAME
from mcpgateway.observe.logs import logger
from mcpgateway.policy.auth import Principal
from mcpgateway.sessions import Session

__all__ = ["McpEndpoint", "Refusal"]

log = logger("mcpgateway.streamable")

VERSION_HEADER = b"MCP-Protocol-Version"
METHOD_HEADER = b"Mcp-Method"
NAME_HEADER = b"Mcp-Name"
KEEPALIVE_SECONDS = 15.0

#: The 2026-07-28 table: HTTP status of a JSON error response by JSON-RPC code.
ERROR_STATUS = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    -32021: 400,
    UNSUPPORTED_PROTOCOL_VERSION: 400,
    METHOD_NOT_FOUND: 404,
}
#: Methods whose name (or URI) the Mcp-Name header mirrors.
NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


class Refusal(Exception):
    """
    An HTTP-level answer: status and a JSON-RPC error body.
    """

    def __init__(
        self, status: int, code: int, message: str, data: Any = None, *, request_id: Any = None, allow: bytes = b""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = McpError(code, message, data)
        self.request_id = request_id
        self.allow = allow


class McpEndpoint:
    """
    The Streamable HTTP endpoint of one L{GatewayApp}.

    @ivar front: The MCP server.
    @ivar keepalive: Seconds between SSE comments on an idle GET stream.
    """

    keepalive = KEEPALIVE_SECONDS

    def __init__(self, gateway: Gateway, calls: ToolCalls, guard: Guard) -> None:
        """
        @param gateway: Whose services and sessions.
        @param calls: Runs and records C{tools/call} (the REST API's too).
        @param guard: Credentials and rate limits (group C{mcp}).
        """
        self.gateway = gateway
        self.guard = guard
        self.front = McpFront(gateway, calls)
        #: The other gateway processes, when sessions are shared (L{mcpgateway.http.forward}).
        self.fleet: Fleet | None = None

    def serve(self, request: IRequest, service: str | None) -> Deferred[bytes]:
        """
        Answer a request to C{/mcp} (C{service} L{None}) or C{/services/<service>/mcp}:
        a foreign C{Origin} is refused before anything else, then the guard
        admits the caller (or raises the REST API's 401/429).
        """
        return Deferred.fromCoroutine(self._serve(request, service))

    async def _serve(self, request: IRequest, service: str | None) -> bytes:
        refusal = self.check_origin(request)
        if refusal is not None:
            return refusal
        principal = await self.guard.admit(request, "mcp")
        return await self.handle(request, principal, service)

    # -- checks ------------------------------------------------------------------

    def check_origin(self, request: IRequest) -> bytes | None:
        """
        A browser's C{Origin} must be the gateway's own (the C{Host} it was
        asked under) or listed in C{server.allowed_origins} (C{"*"}: any).

        @return: The 403 response, or L{None} to go on.
        """
        origin = header(request, b"origin")
        if origin is None:
            return None
        origin = origin.strip()
        allowed = {entry.rstrip("/").lower() for entry in self.gateway.config.server.allowed_origins}
        if "*" in allowed or origin.rstrip("/").lower() in allowed:
            return None
        host = (header(request, b"host") or "").strip().lower()
        try:
            parts = urlsplit(origin)
        except ValueError:  # e.g. "http://[::1": no origin of ours
            parts = None
        if parts is not None and parts.scheme in ("http", "https") and host and parts.netloc.lower() == host:
            return None
        self.guard.security("foreign_origin", request, None, origin=origin[:200])
        error = McpError(INVALID_REQUEST, f"Forbidden: origin {origin[:200]!r} is not allowed")
        return json_response(request, 403, error_message(None, error))

    def _version(self, request: IRequest) -> str | None:
        values = request.requestHeaders.getRawHeaders(VERSION_HEADER) or []
        if len({value for value in values}) > 1:
            raise Refusal(400, HEADER_MISMATCH, "MCP-Protocol-Version is given more than once")
        if not values:
            return None
        version = str(values[0].decode("latin-1")).strip()
        if version not in LEGACY_VERSIONS and version not in MODERN_VERSIONS:
            raise Refusal(
                400,
                UNSUPPORTED_PROTOCOL_VERSION,
                f"Bad Request: unsupported MCP-Protocol-Version {version[:64]!r}",
                {"supported": [*LEGACY_VERSIONS, *MODERN_VERSIONS], "requested": version[:64]},
            )
        return version

    async def _post_checks(self, request: IRequest) -> dict[str, Any]:
        """
        Check C{Accept} and C{Content-Type}, read one JSON-RPC message.
        """
        json_ok, sse_ok = accepts(request)
        if not (json_ok and sse_ok):
            raise Refusal(
                406, INVALID_REQUEST, "Not Acceptable: Accept must list both application/json and text/event-stream"
            )
        content_type = (header(request, b"content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise Refusal(415, INVALID_REQUEST, "Unsupported Media Type: Content-Type must be application/json")
        raw = request.content.read() if request.content is not None else b""
        try:
            message = await parse(raw)
        except JSONTextError as error:
            raise Refusal(400, PARSE_ERROR, f"Parse error: {error}") from None
        if isinstance(message, list):
            raise Refusal(400, INVALID_REQUEST, "Invalid Request: JSON-RPC batches are not supported")
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            raise Refusal(400, INVALID_REQUEST, "Invalid Request: the body must be one JSON-RPC 2.0 message")
        method = message.get("method")
        if method is not None and not isinstance(method, str):
            raise Refusal(400, INVALID_REQUEST, "Invalid Request: method must be a string")
        request_id = message.get("id")
        if "id" in message and (type(request_id) not in (int, str)):
            raise Refusal(400, INVALID_REQUEST, "Invalid Request: the id must be a string or an integer")
        params = message.get("params")
        if params is not None and not isinstance(params, dict):
            raise Refusal(400, INVALID_PARAMS, "Invalid params: params must be an object", request_id=request_id)
        return message

    # -- dispatch ------------------------------------------------------------------

    async def handle(self, request: IRequest, principal: Principal, scope: str | None) -> bytes:
        """
        Answer one HTTP request of an authenticated C{principal}.
        """
        try:
            if scope is not None:
                if not SERVICE_NAME.fullmatch(scope):
                    raise Refusal(404, INVALID_REQUEST, "Not Found: no such service")
                self.gateway.service(scope)
            version = self._version(request)
            method = request.method
            if method not in (b"GET", b"POST", b"DELETE"):
                raise Refusal(
                    405, INVALID_REQUEST, "Method Not Allowed: use POST, GET or DELETE", allow=b"GET, POST, DELETE"
                )
            session_id = header(request, SESSION_HEADER)
            if self.fleet is not None and session_id and version not in MODERN_VERSIONS:
                # A legacy session lives in one process: its owner answers.
                forwarded = await self.fleet.route(request, session_id, create=False, principal=principal)
                if forwarded is not None:
                    return forwarded
            if version in MODERN_VERSIONS:
                if method != b"POST":
                    raise Refusal(405, INVALID_REQUEST, "Method Not Allowed: 2026-07-28 uses POST only", allow=b"POST")
                return await self._modern(request, principal, scope, await self._post_checks(request))
            if method == b"GET":
                return await self._get(request, principal, scope)
            if method == b"DELETE":
                client, _ = self._client(request, principal, scope)
                self.front.close(client)
                return json_response(request, 200, None)
            return await self._legacy(request, principal, scope, await self._post_checks(request))
        except Refusal as refusal:
            if refusal.allow:
                request.setHeader(b"Allow", refusal.allow)
            return json_response(request, refusal.status, error_message(refusal.request_id, refusal.error))
        except GatewayError as error:
            if error.retry_after is not None:
                request.setHeader(b"Retry-After", retry_after_header(error.retry_after))
            return json_response(
                request, error.status, error_message(None, self._shown(gateway_error(error), principal))
            )
        except CancelledError:
            raise  # the client went away
        except Exception:
            log.failure("unexpected error answering {method} {path}", method=request.method, path=request.path)
            internal = McpError(INTERNAL_ERROR, "internal error (logged); the request may be retried")
            return json_response(request, 500, error_message(None, internal))

    def _client(self, request: IRequest, principal: Principal, scope: str | None) -> tuple[McpClient, Session]:
        session_id = header(request, SESSION_HEADER)
        if not session_id:
            raise Refusal(400, INVALID_REQUEST, "Bad Request: missing Mcp-Session-Id header (initialize first)")
        found = self.front.client(session_id, principal)
        if found is None or found[0].scope != scope:
            raise Refusal(404, INVALID_REQUEST, "Not Found: unknown or ended session; initialize a new one")
        return found

    async def _get(self, request: IRequest, principal: Principal, scope: str | None) -> bytes:
        _, sse_ok = accepts(request)
        if not sse_ok:
            raise Refusal(406, INVALID_REQUEST, "Not Acceptable: Accept must list text/event-stream")
        client, session = self._client(request, principal, scope)
        clock = self.gateway.clock

        def used() -> None:  # an open stream keeps its session from expiring
            session.last_accessed = clock.seconds()

        stream = EventStream(request, clock, client.id, self.keepalive, used)
        previous, client.stream = client.stream, stream
        if previous is not None and isinstance(previous, EventStream):
            previous.close()
        try:
            return await stream.done
        finally:
            if client.stream is stream:
                client.stream = None

    async def _legacy(
        self, request: IRequest, principal: Principal, scope: str | None, message: dict[str, Any]
    ) -> bytes:
        method = message.get("method")
        request_id = message.get("id")
        params = message.get("params") or {}
        if method == "initialize":
            if "id" not in message:
                raise Refusal(400, INVALID_REQUEST, "Invalid Request: initialize must be a request")
            try:
                client, result = self.front.initialize(principal, scope, params)
            except McpError as error:
                return json_response(request, 400, error_message(request_id, error))
            except ServiceUnavailable as refused:
                return await self._elsewhere(request, principal, refused)
            if self.fleet is not None:
                try:
                    await self.fleet.placement.claim(client.id)
                except GatewayError:
                    self.front.close(client)  # the caller never learns its id: do not keep it
                    raise
            request.setHeader(SESSION_HEADER, client.id.encode())
            return json_response(request, 200, {"jsonrpc": "2.0", "id": request_id, "result": result})
        client, session = self._client(request, principal, scope)
        if method is None:
            if "id" in message and ("result" in message or "error" in message):
                self.front.answered(client, message)
                return json_response(request, 202, None)
            raise Refusal(400, INVALID_REQUEST, "Invalid Request: neither a request, a notification nor a response")
        if "id" not in message:
            if method == "notifications/cancelled":
                self.front_cancel(client, params)
            return json_response(request, 202, None)
        exchange = Exchange(request, client.id)
        call = client.begin(request_id, exchange)
        ctx = Context(principal, scope, False, session, exchange, client, call, client_address(request))
        call.task = Deferred.fromCoroutine(self.front.dispatch(ctx, method, params))
        try:
            response = {"jsonrpc": "2.0", "id": request_id, "result": await call.task}
        except McpError as error:
            response = error_message(request_id, self._shown(error, principal))
        except GatewayError as error:
            response = error_message(request_id, self._shown(gateway_error(error), principal))
        except CancelledError:
            if not call.cancelled:
                raise  # the client went away
            response = error_message(request_id, McpError(REQUEST_CANCELLED, "Request cancelled"))
        finally:
            client.end(call)
        return exchange.finish(response)

    def _shown(self, error: McpError, principal: Principal) -> McpError:
        """
        @return: C{error} without a child's stderr tail unless C{principal}
            may see it (L{Gateway.shows_stderr}).
        """
        data = error.data
        if not isinstance(data, dict) or "stderr_tail" not in data:
            return error
        if self.gateway.shows_stderr(principal, data.get("service")):
            return error
        return McpError(error.code, error.message, {k: v for k, v in data.items() if k != "stderr_tail"})

    def front_cancel(self, client: McpClient, params: dict[str, Any]) -> None:
        """
        The client's C{notifications/cancelled}: cancel that request (the child is told).
        """
        if not client.cancel(params.get("requestId")):
            log.debug("{id}: cancellation of a request not in flight", id=client.id)

    async def _modern(
        self, request: IRequest, principal: Principal, scope: str | None, message: dict[str, Any]
    ) -> bytes:
        method = message.get("method")
        if "id" not in message:
            if method is None:
                raise Refusal(400, INVALID_REQUEST, "Invalid Request: a response cannot be posted in 2026-07-28")
            return json_response(request, 202, None)  # no client notifications on this wire: acknowledged, dropped
        request_id = message.get("id")
        if method is None:
            raise Refusal(400, INVALID_REQUEST, "Invalid Request: a response cannot be posted in 2026-07-28")
        self._ladder(request, message)
        if method == "initialize":
            raise Refusal(400, INVALID_REQUEST, "initialize is not part of 2026-07-28", request_id=request_id)
        try:
            session = self.front.modern_session(principal)
        except ServiceUnavailable as refused:
            return await self._elsewhere(request, principal, refused)
        exchange = Exchange(request, None)
        ctx = Context(principal, scope, True, session, exchange, address=client_address(request))
        status = 200
        try:
            response = {
                "jsonrpc": "2.0",
                "id": request_id,
                "result": await self.front.dispatch(ctx, method, message.get("params") or {}),
            }
        except McpError as error:
            response, status = (
                error_message(request_id, self._shown(error, principal)),
                ERROR_STATUS.get(error.code, 200),
            )
        except GatewayError as error:
            response = error_message(request_id, self._shown(gateway_error(error), principal))
        return exchange.finish(response, status)

    async def _elsewhere(self, request: IRequest, principal: Principal, refused: ServiceUnavailable) -> bytes:
        """
        This process refused to open a session for C{request}: if it did
        because it drains, a process of the fleet that takes new sessions
        answers instead (the client's balancer may not have noticed yet).

        @raise ServiceUnavailable: C{refused}, if no other process can.
        """
        if self.fleet is not None and refused.code == "draining":
            passed = await self.fleet.pass_on(request, principal)
            if passed is not None:
                return passed
        raise refused

    def _ladder(self, request: IRequest, message: dict[str, Any]) -> None:
        """
        The 2026-07-28 checks: envelope, then headers against the body, then version.
        """
        request_id = message.get("id")
        for name in (VERSION_HEADER, METHOD_HEADER, NAME_HEADER):
            if len(request.requestHeaders.getRawHeaders(name) or []) > 1:
                raise Refusal(400, HEADER_MISMATCH, f"{name.decode()} is given more than once", request_id=request_id)
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if not isinstance(meta, dict) or VERSION_KEY not in meta or CAPABILITIES_KEY not in meta:
            raise Refusal(
                400,
                INVALID_PARAMS,
                f"params._meta must carry {VERSION_KEY!r} and {CAPABILITIES_KEY!r}",
                request_id=request_id,
            )
        version = meta[VERSION_KEY]
        if header(request, VERSION_HEADER) != version:
            raise Refusal(
                400, HEADER_MISMATCH, "MCP-Protocol-Version does not match params._meta", request_id=request_id
            )
        method = message["method"]
        if header(request, METHOD_HEADER) != method:
            raise Refusal(400, HEADER_MISMATCH, "Mcp-Method does not match the body's method", request_id=request_id)
        key = NAME_BEARING.get(method)
        if key is not None and isinstance(params, dict):
            value = params.get(key)
            if value is not None and decode_header_value(header(request, NAME_HEADER)) != value:
                raise Refusal(
                    400, HEADER_MISMATCH, f"Mcp-Name does not match the body's {key!r}", request_id=request_id
                )
        if version != MODERN_VERSION:
            raise Refusal(
                400,
                UNSUPPORTED_PROTOCOL_VERSION,
                "Unsupported protocol version",
                {"supported": list(MODERN_VERSIONS), "requested": version},
                request_id=request_id,
            )
