"""
The REST API: HTTP in, calls on a L{Gateway}, JSON out.

Routes only translate: they check credentials, read and validate the body,
call the gateway, and render its answer or its L{GatewayError} as JSON
C{{"error": ..., "code": ...}}.  Nothing else here knows about sessions or
children.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence
from inspect import isawaitable
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.python import log as twisted_log
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

from mcpgateway.calls import CallObserver, CallPolicy, CallRequest, ToolCalls, rest_session_id
from mcpgateway.drain import Drain
from mcpgateway.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    NotFound,
    ServiceUnavailable,
    UnsupportedMediaType,
    retry_after_header,
)
from mcpgateway.gateway import Gateway
from mcpgateway.http.admin import AdminPages
from mcpgateway.http.forward import Fleet
from mcpgateway.http.guard import Guard, Limiter, client_address
from mcpgateway.http.oauth import ProtectedResource
from mcpgateway.lib import jsontext
from mcpgateway.lib.redact import SECRET_VALUES
from mcpgateway.names import SERVICE_NAME, SESSION_ID, TOOL_NAME, check_name
from mcpgateway.observe.access import AccessLog
from mcpgateway.observe.audit import AuditLog
from mcpgateway.observe.auditquery import query_from_params
from mcpgateway.observe.callstats import CallStats
from mcpgateway.observe.logs import logger
from mcpgateway.observe.metrics import CONTENT_TYPE, GatewayMetrics
from mcpgateway.observe.security import RecentSecurityEvents
from mcpgateway.policy.auth import Authenticator, Principal
from mcpgateway.policy.browser import BrowserSessions
from mcpgateway.policy.budgets import BudgetPolicy

__all__ = ["GatewayApp", "McpMount", "MetricsPage"]

log = logger("mcpgateway.web")

MAX_SESSION_TIMEOUT = 86400.0


P = ParamSpec("P")
R = TypeVar("R")


#: C{json.dumps(body, separators=(",", ":"))}, without building an encoder per call.
_encode = json.JSONEncoder(separators=(",", ":")).encode


def _render(request: IRequest, status: int, body: Any) -> bytes:
    # The security headers (and HSTS) are already set: by BoundedRequest.process.
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    data = _encode(body).encode()
    request.setHeader(b"Content-Length", b"%d" % len(data))
    return data


class McpMount(Protocol):
    """
    What serves the MCP endpoints (L{mcpgateway.http.streamable.McpEndpoint}).
    """

    def serve(self, request: IRequest, service: str | None) -> Any:
        """
        Answer a request to C{/mcp} (C{service} L{None}) or C{/services/<service>/mcp}.
        """


def guarded(
    group: str,
) -> Callable[
    [Callable[Concatenate[GatewayApp, IRequest, Principal, P], Awaitable[Any] | Any]],
    Callable[Concatenate[GatewayApp, IRequest, P], Deferred[Any]],
]:
    """
    Pass the request through the app's L{Guard} for C{group}; the route
    gets the L{Principal}.
    """

    def decorate(
        route: Callable[Concatenate[GatewayApp, IRequest, Principal, P], Awaitable[Any] | Any],
    ) -> Callable[Concatenate[GatewayApp, IRequest, P], Deferred[Any]]:
        async def guard(self: GatewayApp, request: IRequest, /, *args: P.args, **kwargs: P.kwargs) -> Any:
            principal = await self.guard.admit(request, group)
            result = route(self, request, principal, *args, **kwargs)
            return (await result) if isawaitable(result) else result

        def start(self: GatewayApp, request: IRequest, /, *args: P.args, **kwargs: P.kwargs) -> Deferred[Any]:
            return Deferred.fromCoroutine(guard(self, request, *args, **kwargs))

        start.__name__ = route.__name__
        start.__doc__ = route.__doc__
        return start

    return decorate


class GatewayApp:
    """
    The Klein application of the REST API (no global state: one per gateway).
    """

    app = Klein()

    def __init__(
        self,
        gateway: Gateway,
        authenticator: Authenticator,
        limiter: Limiter | None = None,
        metrics: GatewayMetrics | None = None,
        access: AccessLog | None = None,
        policies: Sequence[CallPolicy] = (),
        observers: Sequence[CallObserver] = (),
        audit: AuditLog | None = None,
        fleet: Fleet | None = None,
        drain: Drain | None = None,
    ) -> None:
        """
        @param gateway: What the routes call.
        @param authenticator: Checks credentials.
        @param limiter: Rate limits, or L{None} for none.
        @param metrics: Where to record requests and calls (a new one if L{None}).
        @param access: The access log of tool calls (the Twisted log if L{None}).
        @param policies: Asked to admit each tool call, and which tools a principal sees.
        @param observers: Told of each tool call once it has ended.
        @param audit: The audit log C{GET /audit} reads (and whose metrics
            C{/metrics} shows), or L{None} when it is off; to record calls it
            must also be one of C{observers}.
        @param fleet: The other gateway processes, when sessions are shared
            (C{cluster}): a session's calls go to its owner.
        @param drain: The drain C{POST /admin/drain} starts and C{/health}
            reports (one with C{session.drain_timeout} if L{None}).
        """
        self.gateway = gateway
        self.metrics = metrics if metrics is not None else GatewayMetrics(gateway)
        self.access = access if access is not None else AccessLog()
        #: The RFC 9728 metadata (C{/.well-known/oauth-protected-resource}).
        self.protected = ProtectedResource(gateway.config.server)
        #: The admin dashboard's logged-in browsers.
        self.browsers = BrowserSessions(gateway.clock)
        #: Credentials and rate limits, for this API and the MCP endpoint alike.
        self.guard = Guard(authenticator, limiter, self.metrics, self.protected, self.browsers)
        #: The dashboard's rolling call numbers: one more call observer.
        self.call_stats = CallStats(gateway.clock)
        #: The dashboard's recent security events (listening once L{start}ed).
        self.security_events = RecentSecurityEvents()
        #: Runs and records tool calls, for this API and the MCP endpoint alike.
        self.calls = ToolCalls(gateway, self.metrics, self.access, policies, (*observers, self.call_stats))
        #: The admin dashboard (C{/admin}).
        self.admin = AdminPages(self, self.browsers, self.call_stats, self.security_events)
        #: What serves C{/mcp} (see L{mount_mcp}).
        self.mcp_endpoint: McpMount | None = None
        self.audit = audit
        self.drain = drain if drain is not None else Drain(gateway, gateway.clock, gateway.config.session.drain_timeout)
        if audit is not None:
            self.metrics.registry.register(audit.collector())
        self.fleet = fleet
        if fleet is not None:
            # A forwarded request was admitted (and counted) where it arrived.
            self.guard.forwarded = fleet.principal_of
            self.metrics.registry.register(fleet.placement.collector())

    def security(self, kind: str, request: IRequest, principal: Principal | None, **fields: Any) -> None:
        """
        Record a security event about C{request}.
        """
        self.guard.security(kind, request, principal, **fields)

    def start(self) -> None:
        """
        Start collecting the recent security events the dashboard shows.
        """
        self.security_events.start()

    def stop(self) -> None:
        """
        Stop collecting them.
        """
        self.security_events.stop()

    def mount_mcp(self, endpoint: McpMount) -> None:
        """
        Serve C{/mcp} and C{/services/<name>/mcp} with C{endpoint}
        (L{mcpgateway.http.streamable.McpEndpoint}); until then they are 404.
        """
        self.mcp_endpoint = endpoint

    def resource(self) -> Any:
        """
        @return: The L{twisted.web.resource.IResource} to serve.
        """
        return _Routes(self)

    # -- routes ----------------------------------------------------------------

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """
        Liveness: no credentials, never rate limited; 503 once the process
        drains, so a balancer's health check sends new sessions elsewhere.
        """
        body = self.gateway.health()
        if not self.drain.draining:
            return _render(request, 200, body)
        return _render(request, 503, {**body, **self.drain.describe()})

    @app.route("/.well-known/oauth-protected-resource", methods=["GET"])
    def resource_metadata(self, request: IRequest) -> bytes:
        """
        RFC 9728 metadata of the gateway as a whole: no credentials, never
        rate limited (a small constant answer), 404 without URL issuers.
        """
        return self._metadata(request, "")

    @app.route("/.well-known/oauth-protected-resource/mcp", methods=["GET"])
    def mcp_resource_metadata(self, request: IRequest) -> bytes:
        """
        RFC 9728 metadata of C{/mcp}, where MCP clients look first.
        """
        return self._metadata(request, "/mcp")

    @app.route("/.well-known/oauth-protected-resource/services/<string:name>/mcp", methods=["GET"])
    def service_resource_metadata(self, request: IRequest, name: str) -> bytes:
        """
        RFC 9728 metadata of C{/services/<name>/mcp}.
        """
        check_name(name, SERVICE_NAME, "the service name", "invalid_service_name")
        self.gateway.service(name)
        return self._metadata(request, f"/services/{name}/mcp")

    def _metadata(self, request: IRequest, path: str) -> bytes:
        if not self.protected.advertised:
            raise RouteNotFound()
        return _render(request, 200, self.protected.document(request, path))

    @app.route("/services", methods=["GET"])
    @guarded("default")
    def services(self, request: IRequest, principal: Principal) -> bytes:
        """
        The services with at least one tool the caller may see (see
        L{ToolCalls.visible_services}).
        """
        return _render(request, 200, self.calls.visible_services(principal, self.gateway.list_services()))

    @app.route("/services/<string:name>/tools", methods=["GET"])
    @guarded("tools")
    async def tools(self, request: IRequest, principal: Principal, name: str) -> bytes:
        check_name(name, SERVICE_NAME, "the service name", "invalid_service_name")
        self.gateway.service(name)  # 404 first
        if not self.calls.visible_service(principal, name):
            # Nothing of it is visible: do not start a child to list it.
            return _render(request, 200, {"service": name, "tools": []})
        listing = await self.gateway.list_tools(name)
        listing["tools"] = self.calls.visible_tools(principal, name, listing["tools"])
        return _render(request, 200, listing)

    @app.route("/services/<string:name>/call", methods=["POST"])
    @guarded("call")
    async def call(self, request: IRequest, principal: Principal, name: str) -> bytes:
        check_name(name, SERVICE_NAME, "the service name", "invalid_service_name")
        self.gateway.service(name)  # 404 before reading the body
        body = await _json_body(request)
        tool = check_name(body.get("tool"), TOOL_NAME, "tool", "invalid_tool_name")
        session_id = rest_session_id(body.get("session_id"))
        arguments = _object(body, "arguments")
        metadata = _object(body, "metadata")
        timeout = body.get("timeout", self.gateway.config.session.default_timeout)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_SESSION_TIMEOUT:
            raise BadRequest(
                f"timeout must be a number of seconds above 0 and at most {MAX_SESSION_TIMEOUT:g}", "invalid_timeout"
            )

        async def here(address: str) -> bytes:
            # Span, metric and access-log line: recorded there, as for /mcp calls.
            call = CallRequest(principal, name, tool, arguments, session_id, "rest", address)
            return _render(request, 200, await self.calls.call(call, float(timeout), metadata))

        if self.fleet is None:
            return await here(client_address(request))
        return await self.fleet.serve(request, session_id, principal, client_address(request), here)

    @app.route("/metrics", methods=["GET"])
    @guarded("default")
    def metrics_text(self, request: IRequest, principal: Principal) -> bytes:
        """
        Prometheus text exposition (rendered inline: no thread pool).
        """
        request.setHeader(b"Content-Type", CONTENT_TYPE)
        return self.metrics.render()

    @app.route("/budgets", methods=["GET"])
    @guarded("default")
    async def budgets(self, request: IRequest, principal: Principal) -> bytes:
        """
        Admins only: every budget's counters (L{BudgetPolicy.report}).
        """
        if not principal.admin:
            raise Forbidden("GET /budgets is for admins", "forbidden")
        reports = [await policy.report() for policy in self.calls.policies if isinstance(policy, BudgetPolicy)]
        return _render(request, 200, reports[0] if reports else {"budgets": []})

    @app.route("/sessions", methods=["GET"])
    @guarded("default")
    def sessions(self, request: IRequest, principal: Principal) -> bytes:
        return _render(request, 200, self.gateway.list_sessions(principal))

    @app.route("/sessions/<string:session_id>", methods=["DELETE"])
    @guarded("session_delete")
    async def close_session(self, request: IRequest, principal: Principal, session_id: str) -> bytes:
        check_name(session_id, SESSION_ID, "the session id", "invalid_session_id")
        if self.fleet is not None:
            forwarded = await self.fleet.route(request, session_id, create=False, principal=principal)
            if forwarded is not None:
                return forwarded
        return _render(request, 200, self.gateway.close_session(session_id, principal))

    @app.route("/audit", methods=["GET"])
    @guarded("default")
    async def audit_records(self, request: IRequest, principal: Principal) -> bytes:
        """
        One page of the audit log, newest first: admins only.
        """
        if not principal.admin:
            self.security("forbidden", request, principal)
            raise Forbidden("the audit log is for admin principals only", "forbidden")
        if self.audit is None:
            raise NotFound("the audit log is off (audit.enabled is false)", "audit_disabled")
        params: dict[str, list[str]] = {}
        try:
            for key, values in (request.args or {}).items():
                params[key.decode()] = [value.decode() for value in values]
        except UnicodeDecodeError:
            raise BadRequest("the query string is not UTF-8", "invalid_query") from None
        query = query_from_params(params)
        try:
            page = await self.audit.query(query)
        except Exception as error:
            log.error("GET /audit: the audit storage cannot be read: {error}", error=str(error) or repr(error))
            raise ServiceUnavailable(
                "the audit storage cannot be read now (the gateway's log says why)", "audit_unavailable", retry_after=5
            ) from None
        return _render(request, 200, page)

    # -- the admin dashboard (see mcpgateway.http.admin) -------------------------------

    @app.route("/admin", methods=["GET"])
    async def admin_page(self, request: IRequest) -> bytes:
        """
        The dashboard of a logged-in admin, or the login form.
        """
        return await self.admin.page(request)

    @app.route("/admin/login", methods=["POST"])
    async def admin_login(self, request: IRequest) -> bytes:
        return await self.admin.login(request)

    @app.route("/admin/logout", methods=["POST"])
    @guarded("default")
    def admin_logout(self, request: IRequest, principal: Principal) -> bytes:
        return _render(request, 200, self.admin.logout(request, principal))

    @app.route("/admin/stats", methods=["GET"])
    @guarded("default")
    def admin_stats(self, request: IRequest, principal: Principal) -> bytes:
        return _render(request, 200, self.admin.status(principal))

    @app.route("/admin/services/<string:name>/restart", methods=["POST"])
    @guarded("default")
    def admin_restart(self, request: IRequest, principal: Principal, name: str) -> bytes:
        check_name(name, SERVICE_NAME, "the service name", "invalid_service_name")
        return _render(request, 200, self.admin.restart(principal, name))

    @app.route("/admin/static/<string:name>", methods=["GET"])
    def admin_asset(self, request: IRequest, name: str) -> bytes:
        return self.admin.asset(request, name)

    @app.route("/admin/drain", methods=["POST"])
    @guarded("default")
    def admin_drain(self, request: IRequest, principal: Principal) -> bytes:
        """
        Admins only: start draining this process (L{Drain.drain}); answered
        at once (202), the drain goes on.  The process stays up, drained.
        """
        if not principal.admin:
            self.security("forbidden", request, principal)
            raise Forbidden("POST /admin/drain is for admin principals only", "forbidden")
        self.drain.drain()
        return _render(request, 202, {**self.gateway.health(), **self.drain.describe()})

    # -- MCP (Streamable HTTP; see mcpgateway.http.streamable) ------------------------

    @app.route("/mcp", methods=["GET", "POST", "DELETE"])
    def mcp(self, request: IRequest) -> Any:
        if self.mcp_endpoint is None:
            raise RouteNotFound()
        return self.mcp_endpoint.serve(request, None)

    @app.route("/services/<string:name>/mcp", methods=["GET", "POST", "DELETE"])
    def service_mcp(self, request: IRequest, name: str) -> Any:
        if self.mcp_endpoint is None:
            raise RouteNotFound()
        return self.mcp_endpoint.serve(request, name)

    # -- errors ------------------------------------------------------------------

    @app.handle_errors(GatewayError)
    def gateway_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, GatewayError)
        if error.status == 400:
            self.security("invalid_input", request, None, code=error.code)
        if error.retry_after is not None:
            request.setHeader(b"Retry-After", retry_after_header(error.retry_after))
        # A child's stderr tail or message may echo its credential.
        body: dict[str, Any] = SECRET_VALUES.value(error.body())
        if "stderr_tail" in body:
            principal = self.guard.principal_of(request)
            if principal is None or not self.gateway.shows_stderr(principal, body.get("service")):
                del body["stderr_tail"]
        return _render(request, error.status, body)

    @app.handle_errors(RouteNotFound)
    def no_route(self, request: IRequest, failure: Failure) -> bytes:
        return _render(request, 404, {"error": "no such route", "code": "not_found"})

    @app.handle_errors(MethodNotAllowed)
    def wrong_method(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, MethodNotAllowed)
        allowed = sorted(error.valid_methods or [])
        request.setHeader(b"Allow", ", ".join(allowed).encode())
        method = request.method.decode("ascii", "replace")
        return _render(
            request,
            405,
            {"error": f"{method} is not allowed here (allowed: {', '.join(allowed)})", "code": "method_not_allowed"},
        )

    @app.handle_errors(HTTPException)
    def other_http(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, HTTPException)
        status = error.code or 400
        return _render(request, status, {"error": error.description or "bad request", "code": "invalid_request"})

    @app.handle_errors(Exception)
    def unexpected(self, request: IRequest, failure: Failure) -> bytes:
        log.failure("unexpected error answering {method} {path}", failure, method=request.method, path=request.path)
        return _render(
            request, 500, {"error": "internal error (logged); the request may be retried", "code": "internal_error"}
        )


#: A path segment Klein would hand to a route unchanged (as twisted.web
#: unquoted it): then C{POST /services/<name>/call} needs no routing table.
_PLAIN_SEGMENT = re.compile(rb"[A-Za-z0-9_.\-]+")


class _Routes(Resource):
    """
    The application's routes: C{POST /services/<name>/call}, the hot path,
    straight to L{GatewayApp.call}, answered as Klein would answer it (same
    error handlers, same cancellation when the client goes away); every
    other request through Klein.
    """

    isLeaf = True

    def __init__(self, app: GatewayApp) -> None:
        super().__init__()
        self._app = app
        self._klein = app.app.resource()

    def render(self, request: IRequest) -> Any:
        postpath = request.postpath
        if (
            request.method == b"POST"
            and not request.prepath
            and len(postpath) == 3
            and postpath[0] == b"services"
            and postpath[2] == b"call"
            and _PLAIN_SEGMENT.fullmatch(postpath[1])
        ):
            return self._call(request, postpath[1].decode("ascii"))
        return self._klein.render(request)

    def _call(self, request: IRequest, name: str) -> object:
        app = self._app
        finished = False

        def done(result: object) -> None:
            nonlocal finished
            finished = True

        def gone(failure: Failure) -> None:
            done(failure)
            answer.cancel()

        def failed(failure: Failure) -> bytes | None:
            if finished:
                if not failure.check(CancelledError):
                    twisted_log.err(failure, "Unhandled Error Processing Request.")
                return None
            body: bytes
            if failure.check(GatewayError):
                try:
                    body = app.gateway_error(request, failure)
                    return body
                except Exception:
                    failure = Failure()
            body = app.unexpected(request, failure)
            return body

        def unhandled(failure: Failure) -> None:
            twisted_log.err(failure, "Unhandled Error writing response")

        def respond(body: bytes | None) -> None:
            if isinstance(body, bytes):
                request.write(body)
            if not finished:
                request.finish()

        request.notifyFinish().addCallbacks(done, gone)  # type: ignore[attr-defined]
        answer = maybeDeferred(app.call, request, name=name)
        answer.addErrback(failed).addCallback(respond).addErrback(unhandled)
        return NOT_DONE_YET


async def _json_body(request: IRequest) -> dict[str, Any]:
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type and content_type != b"application/json" and not content_type.endswith(b"+json"):
        raise UnsupportedMediaType(f"the body must be application/json, not {content_type.decode('latin-1')}")
    raw = request.content.read() if request.content is not None else b""
    if not raw.strip():
        raise BadRequest("the body is empty; send a JSON object", "invalid_json")
    try:
        body = await jsontext.parse(raw)
    except jsontext.JSONTextError as error:
        raise BadRequest(f"the body is not valid JSON: {error}", "invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", "invalid_request")
    return body


def _object(body: dict[str, Any], field: str) -> dict[str, Any]:
    value = body.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{field} must be a JSON object", f"invalid_{field}")
    return value


class MetricsPage(Resource):
    """
    C{/metrics} without credentials, for a separate listen address
    (C{server.metrics_listen}) that only the monitoring system can reach.
    """

    isLeaf = True

    def __init__(self, metrics: GatewayMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE)
        return self.metrics.render()
