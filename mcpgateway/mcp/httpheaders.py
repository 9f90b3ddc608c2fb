"""
The HTTP headers of an MCP exchange with a remote server: those a request
carries, and those read from an answer.

What a POST carries depends on the message's era: a 2026-07-28 request
repeats its version, method and name in C{MCP-Protocol-Version},
C{Mcp-Method} and C{Mcp-Name}; a legacy one carries the session's
C{Mcp-Session-Id} and negotiated C{MCP-Protocol-Version}, as the DELETE
that ends the session does.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from mcpgateway.mcp.spec import MODERN_VERSION, VERSION_KEY

__all__ = ["as_headers", "content_type", "delete_headers", "header_value", "name_header", "post_headers"]

#: Methods whose name (or uri) a 2026-07-28 request repeats in C{Mcp-Name}.
_NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_ACCEPT_BOTH = "application/json, text/event-stream"


def post_headers(
    base: dict[str, list[str]], message: dict[str, Any], session_id: str | None, version: str | None
) -> dict[str, list[str]]:
    """
    @param base: Sent with every request (configured and per session).
    @param message: The JSON-RPC message the POST carries.
    @param session_id: The session's C{Mcp-Session-Id}, if the server minted one.
    @param version: The protocol version C{initialize} negotiated, if any.
    @return: The headers of the POST that sends C{message}.
    """
    headers = dict(base)
    headers["Accept"] = [_ACCEPT_BOTH]
    headers["Content-Type"] = ["application/json"]
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if isinstance(meta, dict) and meta.get(VERSION_KEY) == MODERN_VERSION:
        method = str(message.get("method"))
        headers["MCP-Protocol-Version"] = [MODERN_VERSION]
        headers["Mcp-Method"] = [method]
        key = _NAME_BEARING.get(method)
        name = params.get(key) if key and isinstance(params, dict) else None
        if isinstance(name, str):
            headers["Mcp-Name"] = [name_header(name)]
    else:
        _in_session(headers, session_id, version)
    return headers


def delete_headers(base: dict[str, list[str]], session_id: str, version: str | None) -> dict[str, list[str]]:
    """
    @param base: Sent with every request.
    @param session_id: The session the DELETE ends.
    @param version: The protocol version C{initialize} negotiated, if any.
    @return: The headers of the DELETE that ends the session.
    """
    headers = dict(base)
    _in_session(headers, session_id, version)
    return headers


def _in_session(headers: dict[str, list[str]], session_id: str | None, version: str | None) -> None:
    if session_id is not None:
        headers["Mcp-Session-Id"] = [session_id]
    if version is not None:
        headers["MCP-Protocol-Version"] = [version]


def name_header(value: str) -> str:
    """
    @return: C{Mcp-Name} as the SDK encodes it: printable ASCII as is, else
        base64 in a sentinel.
    """
    if value.isascii() and value.isprintable() and value == value.strip() and not value.startswith("=?base64?"):
        return value
    return f"=?base64?{base64.b64encode(value.encode()).decode()}?="


def as_headers(headers: dict[str, list[str]]) -> Headers:
    """
    @return: C{headers} (each name with its values) as a request's L{Headers}.
    """
    result = Headers()
    for name, values in headers.items():
        result.setRawHeaders(name.encode("latin-1"), [value.encode("latin-1") for value in values])
    return result


def content_type(response: IResponse) -> str:
    """
    @return: The media type of C{response} (lower case, no parameters), or C{""}.
    """
    values: list[bytes] = response.headers.getRawHeaders(b"content-type") or [b""]
    return values[0].split(b";")[0].strip().lower().decode("latin-1")


def header_value(response: IResponse, name: bytes) -> str | None:
    """
    @return: The first value of the header C{name} of C{response}, if any.
    """
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None
