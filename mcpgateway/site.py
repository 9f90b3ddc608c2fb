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
from typing import Any

from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from .errors import PayloadTooLarge

__all__ = ["HSTS", "SECURITY_HEADERS", "BoundedRequest", "GatewaySite"]

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
        body = json.dumps(error.body()).encode()
        head = [
            b"HTTP/1.1 413 Payload Too Large",
            b"Server: " + SERVER_NAME,
            b"Content-Type: application/json",
            b"Content-Length: " + str(len(body)).encode(),
            b"Connection: close",
        ]
        head += [name + b": " + value for name, value in SECURITY_HEADERS]
        if self.isSecure():
            head.append(b"Strict-Transport-Security: " + HSTS)
        transport = self.channel.transport
        if transport is None:
            return
        transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        transport.loseConnection()

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if (name.lower() if isinstance(name, (bytes, str)) else name) in (b"server", "server"):
            value = SERVER_NAME
        super().setHeader(name, value)


class GatewaySite(Site):
    """
    A L{Site} with L{BoundedRequest}s, no tracebacks, no access log noise.
    """

    requestFactory = BoundedRequest
    displayTracebacks = False

    def __init__(self, resource: IResource, max_body_bytes: int, **kwargs: Any) -> None:
        """
        @param resource: The root resource.
        @param max_body_bytes: The largest request body accepted.
        """
        super().__init__(resource, **kwargs)
        self.max_body_bytes = max_body_bytes
