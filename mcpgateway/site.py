"""
The HTTP server around the Klein resource.

twisted.web spools a whole request body before rendering and has no size
limit; L{BoundedRequest} answers 413 as soon as the declared length, or the
chunked data received so far, passes C{max_body_bytes}, and closes the
connection without reading the rest.  It also replaces the C{Server} header,
which would otherwise name the Twisted version.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.http import Request as HTTPRequest
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from .errors import GatewayError, PayloadTooLarge

__all__ = ["HSTS", "SECURITY_HEADERS", "BoundedRequest", "GatewayChannel", "GatewaySite", "answer_and_close"]

SERVER_NAME = b"mcpgateway"

SECURITY_HEADERS = (
    (b"X-Content-Type-Options", b"nosniff"),
    (b"X-Frame-Options", b"DENY"),
    (b"Content-Security-Policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"Cache-Control", b"no-store"),
)
HSTS = b"max-age=31536000; includeSubDomains"


class BoundedRequest(Request):
    """
    A request whose body may not exceed the site's C{max_body_bytes}.
    """

    _received = 0
    _rejected = False

    def _limit(self) -> int:
        site = getattr(self.channel, "site", None)
        return int(getattr(site, "max_body_bytes", 10 * 1024 * 1024))

    def gotLength(self, length: int | None) -> None:
        # Always in memory: the body is bounded, and a temporary file would
        # be blocking I/O on the reactor thread.
        self.content = io.BytesIO()
        if length is not None and length > self._limit():
            self._reject()

    def handleContentChunk(self, data: bytes) -> None:
        if self._rejected:
            return
        self._received += len(data)
        if self._received > self._limit():
            self._reject()
            return
        if self.content is not None:
            self.content.write(data)

    def _reject(self) -> None:
        self._rejected = True
        self.content = io.BytesIO()
        error = PayloadTooLarge(f"the request body exceeds {self._limit()} bytes")
        answer_and_close(self.channel.transport, 413, b"Payload Too Large", error, secure=self.isSecure())

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if (name.lower() if isinstance(name, (bytes, str)) else name) in (b"server", "server"):
            value = SERVER_NAME
        super().setHeader(name, value)


def answer_and_close(transport: Any, status: int, reason: bytes, error: GatewayError, *, secure: bool) -> None:
    """
    Write a complete JSON error response straight to C{transport} and close
    it: for requests twisted.web would otherwise keep reading, or answer
    with an empty body.
    """
    if transport is None:
        return
    body = json.dumps(error.body()).encode()
    head = [
        b"HTTP/1.1 %d %s" % (status, reason),
        b"Server: " + SERVER_NAME,
        b"Content-Type: application/json",
        b"Content-Length: " + str(len(body)).encode(),
        b"Connection: close",
    ]
    head += [name + b": " + value for name, value in SECURITY_HEADERS]
    if secure:
        head.append(b"Strict-Transport-Security: " + HSTS)
    transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
    transport.loseConnection()


class GatewayChannel(HTTPChannel):
    """
    HTTP/1.1 only (no HTTP/2 upgrade), with limits on headers and a deadline
    for reading each whole request, so a slow client (slowloris) cannot hold
    a connection by dribbling bytes; malformed requests get a JSON 400.
    """

    maxHeaders = 100
    _deadline: Any = None

    def lineReceived(self, line: bytes) -> None:
        if self._deadline is None:
            timeout = getattr(getattr(self, "site", None), "request_timeout", 30.0)
            self._deadline = self.callLater(timeout, self._too_slow)
        super().lineReceived(line)

    def allContentReceived(self) -> None:
        self._stop_deadline()
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadline()
        super().connectionLost(reason)

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        error = GatewayError("the request was not received in time", "request_timeout")
        answer_and_close(self.transport, 408, b"Request Timeout", error, secure=_secure(self.transport))

    def _respondToBadRequestAndDisconnect(self) -> None:
        self._stop_deadline()
        error = GatewayError("malformed HTTP request (request line, headers or chunking)", "bad_http")
        answer_and_close(self.transport, 400, b"Bad Request", error, secure=_secure(self.transport))


def _secure(transport: Any) -> bool:
    return ISSLTransport.providedBy(transport)


class GatewaySite(Site):
    """
    A L{Site} with L{BoundedRequest}s, no tracebacks, no access log noise.
    """

    requestFactory = BoundedRequest
    protocol = GatewayChannel  # type: ignore[assignment]
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        max_body_bytes: int,
        *,
        idle_timeout: float = 60.0,
        request_timeout: float = 30.0,
        max_header_bytes: int = 16384,
        **kwargs: Any,
    ) -> None:
        """
        @param resource: The root resource.
        @param max_body_bytes: The largest request body accepted.
        @param idle_timeout: Seconds an idle connection is kept open.
        @param request_timeout: Seconds to receive a whole request (line, headers, body).
        @param max_header_bytes: Largest request line plus headers.
        """
        # Bodies are JSON: never parse form submissions (twisted.web would
        # parse every POST's Content-Type with the email package to find out).
        super().__init__(resource, timeout=idle_timeout, parsePOSTFormSubmission=False, **kwargs)
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        self.max_header_bytes = max_header_bytes

    on_response: Callable[[HTTPRequest], None] | None = None
    """
    Told about every answered request (for metrics), after the access log line.
    """

    http_access_log = False
    """
    Whether to write twisted.web's combined access-log line for every
    request (C{logging.http_access}); tool calls have their own access log.
    """

    def log(self, request: HTTPRequest) -> None:
        if self.http_access_log:
            super().log(request)
        if self.on_response is not None:
            self.on_response(request)

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.totalHeadersSize = self.max_header_bytes
        return channel
