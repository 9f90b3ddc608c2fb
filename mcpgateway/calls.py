"""
Tool calls as the gateway records them, whichever door they come in by.

A call through the REST API (C{POST /services/<name>/call}) and a
C{tools/call} through the MCP endpoint (C{/mcp}, C{/services/<name>/mcp})
both run inside L{ToolCalls.run}, which records each one the same way: an
OpenTelemetry span (L{CallSpan}, its C{traceparent} handed to the child), the
C{mcpgateway_tool_call_seconds} histogram, and one access-log line.  The
outcome is C{ok}, C{tool_error} (the tool answered C{isError}), or the
error's machine code with the HTTP status the REST API answers for it, so
both doors report the same outcome for the same failure.

Governance hooks in here too, so each is applied exactly once per call,
whichever door: every L{CallPolicy} is asked to L{admit <CallPolicy.admit>}
the call before it runs (a refusal is a L{GatewayError}, recorded like any
other outcome), in the order given (the tool policy before the budgets, so
a forbidden call spends no budget), and says which tools a principal may see
in a listing (L{ToolCalls.visible_tools}) and which services
(L{ToolCalls.visible_services}); every L{CallObserver} gets one L{CallRecord}
per call, refused or run, when it has ended.

Session ids starting with L{MCP_SESSION_PREFIX} belong to the MCP endpoint
(it mints them); a REST call may not name one (L{rest_session_id}), so a REST
client can neither squat nor use an MCP client's session.  They remain valid
in C{GET /sessions} and C{DELETE /sessions/<id>}.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import CancelledError, Deferred

from mcpgateway.errors import BadRequest, GatewayError
from mcpgateway.gateway import Gateway
from mcpgateway.mcp.jsonrpc import RPCError
from mcpgateway.names import SESSION_ID, check_name
from mcpgateway.observe.access import AccessLog
from mcpgateway.observe.metrics import GatewayMetrics, MetricSource
from mcpgateway.observe.tracing import CallSpan
from mcpgateway.policy.auth import Principal

__all__ = [
    "MCP_SESSION_PREFIX",
    "CallObserver",
    "CallPolicy",
    "CallRecord",
    "CallRequest",
    "ToolCalls",
    "outcome_of",
    "rest_session_id",
]

T = TypeVar("T")

#: The prefix of every session id the MCP endpoint mints.
MCP_SESSION_PREFIX = "mcp-"


def rest_session_id(value: object) -> str:
    """
    Check the C{session_id} of a REST call.

    @param value: What the client sent.
    @return: C{value}, 1-128 of C{A-Z a-z 0-9 _ . -}, not starting with
        L{MCP_SESSION_PREFIX}.
    @raise BadRequest: C{invalid_session_id} otherwise.
    """
    session_id = check_name(value, SESSION_ID, "session_id", "invalid_session_id")
    if session_id.startswith(MCP_SESSION_PREFIX):
        raise BadRequest(
            f"session_id must not start with {MCP_SESSION_PREFIX!r}: those sessions belong to the MCP endpoint",
            "invalid_session_id",
        )
    return session_id


def outcome_of(error: BaseException) -> tuple[str, int]:
    """
    @return: The outcome and the HTTP status the REST API answers for a
        failed call: a L{GatewayError}'s code and status, C{mcp_error} (422)
        for the MCP server's JSON-RPC error, C{client_gone} (499) when the
        client went away or cancelled the call, else C{internal_error} (500).
    """
    if isinstance(error, GatewayError):
        return error.code, error.status
    if isinstance(error, RPCError):
        return "mcp_error", 422
    if isinstance(error, CancelledError):
        return "client_gone", 499
    return "internal_error", 500


@dataclass(frozen=True)
class CallRequest:
    """
    One tool call, as policies and observers see it.

    @ivar principal: The caller.
    @ivar service: The service called.
    @ivar tool: The tool's name in the child.
    @ivar arguments: Its arguments.
    @ivar session_id: The gateway session it runs in.
    @ivar front: The door it came in by: C{"rest"} or C{"mcp"}.
    @ivar address: The client's IP address (C{"-"} if unknown).
    """

    principal: Principal
    service: str
    tool: str
    arguments: Mapping[str, Any]
    session_id: str
    front: str
    address: str = "-"


@dataclass(frozen=True)
class CallRecord:
    """
    How one call ended.

    @ivar request: The call.
    @ivar started: When it started (POSIX time).
    @ivar seconds: How long it took (refusals included).
    @ivar outcome: C{ok}, C{tool_error} or the error's code.
    @ivar status: The HTTP status the REST API answers for it.
    @ivar result: What the call gave (the REST body or the MCP result), or
        L{None} when it failed.
    """

    request: CallRequest
    started: float
    seconds: float
    outcome: str
    status: int
    result: Any = None


class CallPolicy(Protocol):
    """
    A decision taken before a call runs (per-tool rules, budgets...).
    """

    def admit(self, request: CallRequest) -> Deferred[None] | None:
        """
        @return: L{None} (or a Deferred firing with it) to let the call run.
        @raise GatewayError: To refuse it (or fail the Deferred with one).
        """

    def visible(self, principal: Principal, service: str, tool: str) -> bool:
        """
        @return: Whether C{principal} may see C{tool} of C{service} in a listing.
        """

    def visible_service(self, principal: Principal, service: str) -> bool:
        """
        @return: Whether some tool of C{service} may be visible to
            C{principal}, as far as can be told without its tool list
            (L{False} only when none can be).
        """


class CallObserver(Protocol):
    """
    Something told of every call once it has ended (an audit log...).
    """

    def record(self, record: CallRecord) -> None:
        """
        Take one record; must not block (queue it and write elsewhere).
        """


class ToolCalls:
    """
    Runs tool calls through the policies and records each: span, metric,
    access-log line, observers.
    """

    def __init__(
        self,
        gateway: Gateway,
        metrics: GatewayMetrics,
        access: AccessLog,
        policies: Sequence[CallPolicy] = (),
        observers: Sequence[CallObserver] = (),
    ) -> None:
        """
        @param gateway: Runs REST calls.
        @param metrics: Gets the call's latency by service, tool and outcome.
        @param access: Gets the call's access-log line.
        @param policies: Asked, in order, to admit each call.
        @param observers: Told of each call when it has ended.

        A policy or observer that is a L{MetricSource} is collected with the
        gateway's metrics.
        """
        self.gateway = gateway
        self.metrics = metrics
        self.access = access
        self.policies = tuple(policies)
        self.observers = tuple(observers)
        for part in (*self.policies, *self.observers):
            if isinstance(part, MetricSource):  # e.g. the budgets' remaining calls
                metrics.add(part)

    def visible(self, principal: Principal, service: str, tool: str) -> bool:
        """
        @return: Whether every policy lets C{principal} see C{tool} of C{service}.
        """
        return all(policy.visible(principal, service, tool) for policy in self.policies)

    def visible_tools(self, principal: Principal, service: str, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """
        @return: The tools of C{service} (MCP C{Tool} objects) that C{principal} may see.
        """
        if not self.policies:
            return tools
        return [tool for tool in tools if self.visible(principal, service, str(tool.get("name")))]

    def visible_service(self, principal: Principal, service: str) -> bool:
        """
        @return: Whether some tool of C{service} may be visible to C{principal}:
            every policy says so without the tool list, and, when the
            service's tool list is cached, one of its tools is visible.  A
            service whose list is not cached yet is not started to tell.
        """
        if not self.policies:
            return True
        if not all(policy.visible_service(principal, service) for policy in self.policies):
            return False
        known = self.gateway.services.get(service)
        tools = known.tool_cache.cached if known is not None else None
        return tools is None or bool(self.visible_tools(principal, service, tools))

    def visible_services(self, principal: Principal, listing: Mapping[str, T]) -> dict[str, T]:
        """
        @param listing: Something per service name (e.g. C{GET /services}' body).
        @return: The entries of the services L{visible_service} to C{principal}.
        """
        return {name: entry for name, entry in listing.items() if self.visible_service(principal, name)}

    async def call(self, request: CallRequest, timeout: float, metadata: dict[str, Any]) -> dict[str, Any]:
        """
        A REST call: L{Gateway.call_tool}, through the policies, recorded.

        @return: The C{POST /services/<name>/call} body.
        @raise GatewayError: As L{Gateway.call_tool}, or a policy's refusal.
        """

        def work(meta: dict[str, Any]) -> Awaitable[dict[str, Any]]:
            return self.gateway.call_tool(
                request.service,
                request.tool,
                request.session_id,
                dict(request.arguments),
                timeout,
                metadata,
                request.principal,
                meta,
            )

        return await self.run(request, work, lambda answer: answer["is_error"] is True)

    async def run(
        self,
        request: CallRequest,
        work: Callable[[dict[str, Any]], Awaitable[T]],
        is_error: Callable[[T], bool],
    ) -> T:
        """
        Run one tool call through the policies and record it, however it ends.

        @param request: The call.
        @param work: Runs the call, given the C{params._meta} entries for the
            child (the span's C{traceparent}, if any).
        @param is_error: Whether a result is a tool error (C{isError}).
        @return: What C{work} gave.
        @raise GatewayError: A policy's refusal, or the call's failure.
        """
        started = time.perf_counter()
        outcome, status = "internal_error", 500
        result: T | None = None
        span = CallSpan(request.service, request.tool, request.session_id)
        try:
            for policy in self.policies:
                waiting = policy.admit(request)
                if waiting is not None:
                    await waiting
            result = await work(span.meta())
            outcome, status = ("tool_error" if is_error(result) else "ok"), 200
            return result
        except Exception as error:
            outcome, status = outcome_of(error)
            raise
        finally:
            seconds = time.perf_counter() - started
            span.end(outcome)
            self.metrics.tool_call(request.service, request.tool, outcome, seconds)
            self.access.call(
                principal=request.principal.name,
                service=request.service,
                tool=request.tool,
                session=request.session_id,
                status=status,
                outcome=outcome,
                seconds=seconds,
            )
            if self.observers:
                record = CallRecord(request, time.time() - seconds, seconds, outcome, status, result)
                for observer in self.observers:
                    observer.record(record)
