"""
How MCP messages go out over HTTP: one JSON response (L{Exchange}) or a
server-sent event stream (L{EventStream}), and the small helpers both the
streams and the endpoint use to read headers and write JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.web.iweb import IRequest

from mcpgateway.front.errors import McpError

__all__ = [
    "SESSION_HEADER",
    "EventStream",
    "Exchange",
    "accepts",
    "decode_header_value",
    "error_message",
    "header",
    "json_response",
    "sse_event",
]

SESSION_HEADER = b"Mcp-Session-Id"
_B64 = re.compile(r"^=\?base64\?(?P<payload>.*)\?=$")


def json_response(request: IRequest, status: int, body: dict[str, Any] | None) -> bytes:
    request.setResponseCode(status)
    if body is None:
        return b""
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body, separators=(",", ":")).encode()


def sse_event(message: dict[str, Any]) -> bytes:
    return b"event: message\ndata: " + json.dumps(message, separators=(",", ":")).encode() + b"\n\n"


def error_message(request_id: Any, error: McpError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_json()}


def header(request: IRequest, name: bytes) -> str | None:
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    return str(values[0].decode("latin-1"))


def accepts(request: IRequest) -> tuple[bool, bool]:
    """
    @return: Whether C{Accept} covers C{application/json}, and C{text/event-stream}.
    """
    raw = b",".join(request.requestHeaders.getRawHeaders(b"accept", [])).decode("latin-1")
    kinds = {part.split(";")[0].strip().lower() for part in raw.split(",")}
    anything = "*/*" in kinds
    return (
        anything or bool(kinds & {"application/json", "application/*"}),
        anything or bool(kinds & {"text/event-stream", "text/*"}),
    )


def decode_header_value(value: str | None) -> str | None:
    """
    @return: A header value, with the C{=?base64?...?=} form decoded (L{None} if malformed).
    """
    if value is None:
        return None
    match = _B64.fullmatch(value)
    if match is None:
        return value
    try:
        return base64.b64decode(match.group("payload"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


class Exchange:
    """
    The answer to one POSTed request: a JSON body, or an SSE stream as soon as
    a message must go out before the result.
    """

    def __init__(self, request: IRequest, session_id: str | None) -> None:
        self.request = request
        self.session_id = session_id
        self.streaming = False
        self.finished = False
        self._gone = False
        request.notifyFinish().addBoth(self._ended)  # type: ignore[attr-defined]

    def _ended(self, result: object) -> None:
        self._gone = True

    @property
    def open(self) -> bool:
        """
        Whether messages may still be sent.
        """
        return not (self._gone or self.finished)

    def send(self, message: dict[str, Any]) -> bool:
        """
        Send a message before the result (switching to SSE).
        """
        if not self.open:
            return False
        if not self.streaming:
            self.streaming = True
            self.request.setResponseCode(200)
            self.request.setHeader(b"Content-Type", b"text/event-stream")
            self.request.setHeader(b"X-Accel-Buffering", b"no")
            if self.session_id:
                self.request.setHeader(SESSION_HEADER, self.session_id.encode())
        self.request.write(sse_event(message))
        return True

    def finish(self, message: dict[str, Any], status: int = 200) -> bytes:
        """
        @return: The rest of the response body: the final message.
        """
        self.finished = True
        if self.streaming:
            if not self._gone:
                self.request.write(sse_event(message))
            return b""
        if self.session_id:
            self.request.setHeader(SESSION_HEADER, self.session_id.encode())
        return json_response(self.request, status, message)


class EventStream:
    """
    A legacy session's GET stream of server-initiated messages.

    @ivar done: Fires (with C{b""}) when the gateway ends the stream.
    """

    def __init__(
        self,
        request: IRequest,
        clock: IReactorTime,
        session_id: str,
        keepalive: float,
        on_keepalive: Callable[[], None] | None = None,
    ) -> None:
        self.request = request
        self._on_keepalive = on_keepalive
        self.done: Deferred[bytes] = Deferred(lambda d: self._stop())
        self._gone = False
        request.notifyFinish().addBoth(self._ended)  # type: ignore[attr-defined]
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.setHeader(SESSION_HEADER, session_id.encode())
        request.write(b": stream open\n\n")
        self._ping = LoopingCall(self._keepalive)
        self._ping.clock = clock
        self._ping.start(keepalive, now=False)

    def _ended(self, result: object) -> None:
        self._gone = True
        self._stop()

    @property
    def open(self) -> bool:
        """
        Whether messages may still be sent.
        """
        return not self._gone and not self.done.called

    def send(self, message: dict[str, Any]) -> bool:
        """
        Send one message.
        """
        if not self.open:
            return False
        self.request.write(sse_event(message))
        return True

    def close(self) -> None:
        """
        End the stream (the response finishes).
        """
        self._stop()
        if not self.done.called:
            self.done.callback(b"")

    def _keepalive(self) -> None:
        if self.open:
            self.request.write(b": keepalive\n\n")
            if self._on_keepalive is not None:
                self._on_keepalive()

    def _stop(self) -> None:
        if self._ping.running:
            self._ping.stop()
