"""
The errors a gateway operation can end in, each with its HTTP status and a
stable machine code.

These are plain exceptions raised by the core (which knows nothing of HTTP
beyond these numbers); the web layer renders them as
C{{"error": message, "code": code, ...}}.  5xx is used only where a retry is
safe, because the SignalWire skill re-sends every 5xx.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

__all__ = [
    "BadRequest",
    "BudgetExhausted",
    "CallTimedOut",
    "ChildFailed",
    "Forbidden",
    "GatewayError",
    "LimitReached",
    "NotFound",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "SessionClosed",
    "ToolRPCError",
    "Unauthorized",
    "UnsupportedMediaType",
    "retry_after_header",
    "stderr_excerpt",
]


class ExitDescription(Protocol):
    """
    How a child ended, as L{ChildFailed.ended} reports it
    (L{mcpgateway.mcp.stdio.ExitInfo}).
    """

    exit_code: int | None
    signal: int | None
    stderr_tail: str
    cause: dict[str, Any] | None

    def describe(self) -> str:
        """
        E.g. C{"exited with status 3"}.
        """


class GatewayError(Exception):
    """
    A failure with a status, a machine code and a message for a human.

    @ivar status: The HTTP status.
    @ivar code: The stable machine code (documented in README.rst).
    @ivar message: The human message.
    @ivar retry_after: Seconds after which a retry may succeed, or L{None}.
    @ivar details: Further JSON-safe fields for the response body.
    """

    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        code: str | None = None,
        *,
        retry_after: float | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        self.details = details

    def body(self) -> dict[str, Any]:
        """
        @return: The JSON body: C{error}, C{code} and the details (the web
            layer redacts secret values from it: a child's stderr tail or
            error message may echo its credential).
        """
        return {"error": self.message, "code": self.code, **self.details}


def retry_after_header(seconds: float) -> bytes:
    """
    @return: The C{Retry-After} value for C{seconds}: whole seconds, rounded
        up, at least 1.
    """
    return str(max(1, math.ceil(seconds))).encode()


class BadRequest(GatewayError):
    """
    400: the request is malformed; the message says which field and why.
    """

    status = 400
    code = "invalid_request"


class Forbidden(GatewayError):
    """
    403: the principal may not do this.  Codes: C{forbidden_tool} (the tool
    policy hides or refuses the tool), C{forbidden_argument} (an argument is
    outside the policy's constraints; C{argument} names it), C{forbidden}
    (an admin-only route, e.g. an agent
    reading the budgets or the audit log), C{no_credential} (the service
    runs with per-principal credentials and none is mapped to the caller,
    or the caller is not the owner of the session whose child holds one).
    """

    status = 403
    code = "forbidden"


class NotFound(GatewayError):
    """
    404: no such service, session or route.
    """

    status = 404
    code = "not_found"


class SessionClosed(GatewayError):
    """
    409: the session was closed while the call was in flight.
    """

    status = 409
    code = "session_closed"


class ToolRPCError(GatewayError):
    """
    422: the MCP server answered with a JSON-RPC error (code and data kept).
    """

    status = 422
    code = "mcp_error"


class LimitReached(GatewayError):
    """
    429: a session limit (or rate limit) is reached; see C{retry_after}.
    """

    status = 429
    code = "limit_reached"


class BudgetExhausted(GatewayError):
    """
    429: a call budget of the principal is spent until its window ends; see
    C{retry_after}.  Not a rate limit: retrying sooner is refused again.
    """

    status = 429
    code = "budget_exhausted"


class ChildFailed(GatewayError):
    """
    502: the child exited or spoke something that is not MCP.
    """

    status = 502
    code = "child_failed"

    @classmethod
    def ended(cls, service: str, when: str, info: ExitDescription) -> ChildFailed:
        """
        @param service: The service whose child ended.
        @param when: What it was doing, e.g. C{"during the call"}.
        @param info: How it ended.
        @return: E.g. C{"the todo server exited with status 3 during the
            call"}, with its exit status, signal and the last 2 KiB of its
            stderr for the client; code C{child_limit} with C{limit},
            C{value} and C{key} when a sandbox limit stopped it.
        """
        cause = info.cause or {}
        limit = {key: cause[key] for key in ("limit", "value", "key") if key in cause}
        return cls(
            f"the {service} server {info.describe()} {when}",
            "child_limit" if limit else None,
            service=service,
            exit_status=info.exit_code,
            exit_signal=info.signal,
            stderr_tail=stderr_excerpt(info.stderr_tail),
            **limit,
        )


class ServiceUnavailable(GatewayError):
    """
    503: the service cannot start a child now; see C{retry_after}.
    """

    status = 503
    code = "service_unavailable"


class CallTimedOut(GatewayError):
    """
    504: the MCP server did not answer in time; the call was cancelled.
    """

    status = 504
    code = "call_timeout"


class Unauthorized(GatewayError):
    """
    401: missing or invalid credentials.
    """

    status = 401
    code = "unauthorized"


class PayloadTooLarge(GatewayError):
    """
    413: the request body exceeds C{server.max_body_bytes}.
    """

    status = 413
    code = "body_too_large"


class UnsupportedMediaType(GatewayError):
    """
    415: the body is not declared as JSON.
    """

    status = 415
    code = "unsupported_media_type"


def stderr_excerpt(tail: str, size: int = 2048) -> str:
    """
    @return: The last C{size} characters of a stderr tail, from the start
        of a line when it is cut: the cut line could hold a piece of a
        secret that redaction by value would not recognise (a secret holds
        no line break).
    """
    if len(tail) <= size:
        return tail
    kept = tail[-size:]
    cut = kept.find("\n")
    return kept[cut + 1 :] if cut != -1 else kept
