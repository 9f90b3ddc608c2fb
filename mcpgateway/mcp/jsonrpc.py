"""
JSON-RPC 2.0 messages as the gateway reads and writes them on a child's
pipes: one message per line, strict on the way out, forgiving of a child's
non-finite numbers on the way in.
"""

from __future__ import annotations

import json
import math
from typing import Any

from twisted.python.failure import Failure

from mcpgateway.lib.jsontext import dumps
from mcpgateway.mcp.spec import INTERNAL_ERROR

__all__ = ["RPCError", "decode", "encode_line", "error_member"]


class RPCError(Exception):
    """
    The child answered a request with a JSON-RPC error.

    @ivar code: The JSON-RPC error code.
    @ivar message: Its message.
    @ivar data: Its C{data} member, or L{None}.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"JSON-RPC error {code}: {message}")
        self.code = code
        self.message = message
        self.data = data


def _no_constant(name: str) -> None:
    """
    A child's C{NaN} or C{Infinity} (not JSON, but Python's encoder writes
    them) is read as C{null}: no client could read it.
    """
    return None


def _finite_or_none(text: str) -> float | None:
    """
    A number that overflows a double (e.g. C{1e400}) is read as C{null}.
    """
    value = float(text)
    return value if math.isfinite(value) else None


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_or_none)


def decode(text: str) -> Any:
    """
    @return: One JSON text from a child, its non-finite numbers read as C{null}.
    @raise ValueError: If it is not JSON.
    """
    return _DECODER.decode(text)


def encode_line(message: dict[str, Any]) -> bytes:
    """
    @return: C{message} as one NDJSON line.
    @raise ValueError: If it holds a non-finite number, a value JSON cannot
        represent, or nesting too deep to serialise.
    """
    try:
        return dumps(message).encode() + b"\n"
    except RecursionError:
        raise ValueError("the message is nested too deeply to send") from None
    except TypeError as error:
        raise ValueError(f"the message cannot be sent as JSON: {error}") from None


def error_member(failure: Failure) -> dict[str, Any]:
    """
    @return: The JSON-RPC C{error} member answering a request with C{failure}.
    """
    error = failure.value
    if isinstance(error, RPCError):
        body: dict[str, Any] = {"code": error.code, "message": error.message}
        if error.data is not None:
            body["data"] = error.data
        return body
    return {"code": INTERNAL_ERROR, "message": f"the gateway could not answer: {error}"}
