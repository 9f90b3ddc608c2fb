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

Session ids starting with L{MCP_SESSION_PREFIX} belong to the MCP endpoint
(it mints them); a REST call may not name one (L{rest_session_id}), so a REST
client can neither squat nor use an MCP client's session.  They remain valid
in C{GET /sessions} and C{DELETE /sessions/<id>}.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError

from mcpgateway.errors import BadRequest, GatewayError
from mcpgateway.gateway import Gateway
from mcpgateway.mcp.jsonrpc import RPCError
from mcpgateway.names import SESSION_ID, check_name
from mcpgateway.observe.access import AccessLog
from mcpgateway.observe.metrics import GatewayMetrics
from mcpgateway.observe.tracing import CallSpan
from mcpgateway.policy.auth import Principal

__all__ = ["MCP_SESSION_PREFIX", "ToolCalls", "outcome_of", "rest_session_id"]

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


class ToolCalls:
    """
    Runs tool calls and records each: span, metric, access-log line.
    """

    def __init__(self, gateway: Gateway, metrics: GatewayMetrics, access: AccessLog) -> None:
        """
        @param gateway: Runs REST calls.
        @param metrics: Gets the call's latency by service, tool and outcome.
        @param access: Gets the call's access-log line.
        """
        self.gateway = gateway
        self.metrics = metrics
        self.access = access

    async def call(
        self,
        service: str,
        tool: str,
        session_id: str,
        arguments: dict[str, Any],
        timeout: float,
        metadata: dict[str, Any],
        principal: Principal,
    ) -> dict[str, Any]:
        """
        A REST call: L{Gateway.call_tool}, recorded.

        @return: The C{POST /services/<name>/call} body.
        @raise GatewayError: As L{Gateway.call_tool}.
        """

        def work(meta: dict[str, Any]) -> Awaitable[dict[str, Any]]:
            return self.gateway.call_tool(service, tool, session_id, arguments, timeout, metadata, principal, meta)

        return await self.run(service, tool, session_id, principal, work, lambda answer: answer["is_error"] is True)

    async def run(
        self,
        service: str,
        tool: str,
        session_id: str,
        principal: Principal,
        work: Callable[[dict[str, Any]], Awaitable[T]],
        is_error: Callable[[T], bool],
    ) -> T:
        """
        Run one tool call and record it, however it ends.

        @param service: The service called.
        @param tool: The tool's name in the child.
        @param session_id: The gateway session it runs in.
        @param principal: The caller.
        @param work: Runs the call, given the C{params._meta} entries for the
            child (the span's C{traceparent}, if any).
        @param is_error: Whether a result is a tool error (C{isError}).
        @return: What C{work} gave.
        """
        started = time.perf_counter()
        outcome, status = "internal_error", 500
        span = CallSpan(service, tool, session_id)
        try:
            result = await work(span.meta())
            outcome, status = ("tool_error" if is_error(result) else "ok"), 200
            return result
        except Exception as error:
            outcome, status = outcome_of(error)
            raise
        finally:
            seconds = time.perf_counter() - started
            span.end(outcome)
            self.metrics.tool_call(service, tool, outcome, seconds)
            self.access.call(
                principal=principal.name,
                service=service,
                tool=tool,
                session=session_id,
                status=status,
                outcome=outcome,
                seconds=seconds,
            )
