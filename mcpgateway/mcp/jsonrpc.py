"""
JSON-RPC 2.0 messages as the gateway reads and writes them on a child's
pipes: one message per line, strict on the way out, forgiving of a child's
non-finite numbers on the way in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mcpgateway.lib.jsontext import dumps
from mcpgateway.mcp.spec import INTERNAL_ERROR

__all__ = ["RPCError", "decode", "deliver", "encode_line", "error_member", "settle"]


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


def settle(waiting: Deferred[dict[str, Any]], message: dict[str, Any]) -> None:
    """
    Fire a request's L{Deferred} with the response C{message}: its C{result}
    (an object; anything else as C{{"value": ...}}), or an L{RPCError} from
    its C{error} (a malformed one as L{INTERNAL_ERROR}).
    """
    if "error" in message:
        error = message["error"]
        if not isinstance(error, dict):
            error = {"code": INTERNAL_ERROR, "message": repr(error)}
        code = error.get("code")
        waiting.errback(
            RPCError(
                code if isinstance(code, int) and not isinstance(code, bool) else INTERNAL_ERROR,
                str(error.get("message", "")),
                error.get("data"),
            )
        )
    else:
        result = message.get("result")
        waiting.callback(result if isinstance(result, dict) else {"value": result})


def deliver(
    method: str,
    params: dict[str, Any],
    progress_routes: Mapping[str | int, Callable[[dict[str, Any]], None]],
    handlers: Iterable[Callable[[str, dict[str, Any]], None] | None],
) -> None:
    """
    Hand a notification of the server to whoever waits for it: a
    C{notifications/progress} whose token the gateway minted to its route
    only; anything else to each of C{handlers} (L{None}s skipped).
    """
    if method == "notifications/progress":
        token = params.get("progressToken")
        route = progress_routes.get(token) if isinstance(token, (str, int)) else None
        if route is not None:
            route(params)
            return
    for handler in handlers:
        if handler is not None:
            handler(method, params)
