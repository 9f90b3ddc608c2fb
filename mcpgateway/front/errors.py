"""
JSON-RPC errors for the MCP front door's clients, and how the gateway's own
failures (limits, start failures, timeouts) and a child's JSON-RPC errors
become one.
"""

from __future__ import annotations

from typing import Any

from mcpgateway.errors import CallTimedOut, GatewayError
from mcpgateway.lib.redact import SECRET_VALUES
from mcpgateway.mcp.jsonrpc import RPCError
from mcpgateway.mcp.spec import INTERNAL_ERROR, INVALID_PARAMS, REQUEST_TIMEOUT

__all__ = ["McpError", "as_mcp_error", "gateway_error"]


class McpError(Exception):
    """
    A JSON-RPC error for the client.

    @ivar code: The JSON-RPC code.
    @ivar message: Its message.
    @ivar data: Its C{data}, or L{None}.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        """
        @return: The C{error} member of a JSON-RPC response.
        """
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def gateway_error(error: GatewayError) -> McpError:
    """
    @return: A gateway failure (limit, start failure, timeout...) as a
        JSON-RPC error, every loaded secret value in it redacted.
    """
    data: dict[str, Any] = {"reason": error.code, "status": error.status, **error.details}
    if error.retry_after is not None:
        data["retry_after"] = round(error.retry_after, 3)
    if isinstance(error, CallTimedOut):
        code = REQUEST_TIMEOUT
    elif error.status in (400, 403):  # a request the client must change, not retry
        code = INVALID_PARAMS
    else:
        code = INTERNAL_ERROR
    return McpError(code, SECRET_VALUES.text(error.message), SECRET_VALUES.value(data))


def as_mcp_error(error: Exception, what: str) -> McpError:
    """
    @param what: What failed, for an unexpected error's message.
    @return: C{error} (a L{GatewayError}, an L{RPCError} or anything else)
        for the client, every loaded secret value in it redacted.
    """
    if isinstance(error, GatewayError):
        return gateway_error(error)
    if isinstance(error, RPCError):
        return McpError(error.code, SECRET_VALUES.text(error.message), SECRET_VALUES.value(error.data))
    return McpError(INTERNAL_ERROR, SECRET_VALUES.text(f"{what}: {error}"))
