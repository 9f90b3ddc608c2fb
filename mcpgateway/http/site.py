"""
The HTTP server around the Klein resource.

twisted.web spools a whole request body before rendering and has no size
limit; L{BoundedRequest} answers 413 as soon as the declared length, or the
chunked data received so far, passes C{max_body_bytes}.  It also replaces the
C{Server} header, which would otherwise name the Twisted version, gives every
answer the security headers, and answers what Klein would route badly (a
request target C{*}, a path or C{Host} that is not UTF-8, an empty path
segment) with JSON before Klein sees it.

L{GatewayChannel} answers the requests it gives up on (400 C{bad_http}, 408,
413) itself and then closes the connection I{lingering}: it half-closes its
side (on plain TCP), stops parsing, and reads and discards what the client is
still sending until the client closes, C{linger_seconds} pass or
C{linger_bytes} were discarded.  Closing at once, with the client's body
still arriving, would make the kernel answer it with a reset, which destroys
the error response before the client has read it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IDelayedCall, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, datetimeToString
from twisted.web.http import Request as HTTPRequest
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from mcpgateway.errors import BadRequest, GatewayError, NotFound, PayloadTooLarge

__all__ = [
    "HSTS",
    "LINGER_BYTES",
    "LINGER_SECONDS",
    "SECURITY_HEADERS",
    "BoundedRequest",
    "GatewayChannel",
    "GatewaySite",
    "error_response",
    "set_security_headers",
]

SERVER_NAME = b"mcpgateway"

SECURITY_HEADERS = (
    (b"X-Content-Type-Options", b"nosniff"),
    (b"X-Frame-Options", b"DENY"),
    (b"Content-Security-Policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"Cache-Control", b"no-store"),
)
HSTS = b"max-age=31536000; includeSubDomains"

#: How long a connection answered with an error keeps reading (and
#: discarding) what the client still sends before it is closed for good.
LINGER_SECONDS = 2.0
#: How much a lingering connection discards before it is closed for good.
LINGER_BYTES = 16 * 1024 * 1024


def set_security_headers(request: IRequest) -> None:
    """
    Give C{request}'s answer the security headers (and HSTS over TLS).

    @param request: The request being answered.
    """
    for name, value in SECURITY_HEADERS:
        request.setHeader(name, value)
    if request.isSecure():
        request.setHeader(b"Strict-Transport-Security", HSTS)


def error_response(status: int, reason: bytes, error: GatewayError, *, secure: bool) -> bytes:
    """
    A complete HTTP/1.1 response carrying C{error} as JSON, which closes the
    connection: for the answers the channel writes itself.

    @param status: The HTTP status.
    @param reason: Its reason phrase.
    @param error: The error, rendered as C{error.body()}.
    @param secure: Whether the connection is TLS (adds HSTS).
    @return: The status line, headers and body.
    """
    body = json.dumps(error.body()).encode()
    head = [
        b"HTTP/1.1 %d %s" % (status, reason),
        b"Server: " + SERVER_NAME,
        b"Date: " + datetimeToString(),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        b"Connection: close",
    ]
    head += [name + b": " + value for name, value in SECURITY_HEADERS]
    if secure:
        head.append(b"Strict-Transport-Security: " + HSTS)
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class BoundedRequest(Request):
    """
    A request whose body may not exceed the site's C{max_body_bytes}, and
    whose every answer carries the security headers.
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
        answer = getattr(self.channel, "answer_and_linger", None)
        if answer is not None:
            answer(413, b"Payload Too Large", error)
        elif self.channel is not None and self.channel.transport is not None:
            self.channel.transport.write(error_response(413, b"Payload Too Large", error, secure=self.isSecure()))
            self.channel.transport.loseConnection()

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if isinstance(name, (bytes, str)) and len(name) == 6 and name.lower() in (b"server", "server"):
            value = SERVER_NAME
        super().setHeader(name, value)

    def process(self) -> None:
        """
        Answer a request Klein cannot route well (see L{unroutable}) with
        JSON; give every other one the security headers, then process it.
        """
        set_security_headers(self)
        refusal = self.unroutable()
        if refusal is None:
            super().process()
            return
        self.site = self.channel.site  # type: ignore[attr-defined]
        self.setHeader(b"Server", SERVER_NAME)
        self.setHeader(b"Date", datetimeToString())
        body = json.dumps(refusal.body()).encode()
        self.setResponseCode(refusal.status)
        self.setHeader(b"Content-Type", b"application/json")
        self.setHeader(b"Content-Length", b"%d" % len(body))
        self.write(body)
        self.finish()

    def unroutable(self) -> GatewayError | None:
        """
        What Klein would get wrong, checked on the path as Klein sees it
        (split on C{/}, each segment %-decoded, joined again):

            - the request target C{*} (twisted.web answers it itself, without
              a body): 404 C{not_found};
            - a path or C{Host} that is not UTF-8 (Klein answers text/html and
              logs a traceback): 400 C{invalid_url};
            - an empty path segment (C{//}, also from C{%2F}; werkzeug
              answers a redirect without C{Location}): 404 C{not_found}.

        @return: The error to answer, or L{None} to route the request.
        """
        if self.path == b"*":
            return NotFound("no such route: the request target '*' is not served", "not_found")
        path = b"/".join(unquote_to_bytes(segment) for segment in self.path[1:].split(b"/"))
        if not path.startswith(b"/"):
            path = b"/" + path
        try:
            path.decode("utf-8")
            self.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            return BadRequest("the path (%-decoded) or the Host header is not UTF-8", "invalid_url")
        if b"//" in path:
            return NotFound("no such route: the path has an empty segment", "not_found")
        return None


class GatewayChannel(HTTPChannel):
    """
    HTTP/1.1 only (no HTTP/2 upgrade), with limits on headers and a deadline
    for reading each whole request, from its first byte on, so a slow client
    (slowloris) cannot hold a connection by dribbling bytes; an idle
    keep-alive connection is bounded by the site's idle timeout instead.
    Malformed requests get a JSON 400, and every answer the channel writes
    itself ends in a lingering close (see the module docstring).

    @ivar linger_seconds: How long to keep discarding input after such an answer.
    @ivar linger_bytes: How much input to discard at most after such an answer.
    """

    maxHeaders = 100
    linger_seconds = LINGER_SECONDS
    linger_bytes = LINGER_BYTES
    _deadline: IDelayedCall | None = None
    _linger: IDelayedCall | None = None
    _closing = False
    _discarded = 0
    _secure = False
    _secure_transport: Any = None
    _addresses: tuple[Any, Any] = (None, None)
    _addresses_of: Any = None

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            self._discard(data)
            return
        if not self._handlingRequest:
            # The first byte of a request: from now on it must arrive whole
            # within request_timeout.  (While a request is being answered,
            # what arrives is only buffered.)
            self._start_deadline()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._closing:
            return
        # A request pipelined behind one answered at once is parsed from the
        # buffer, without a dataReceived of its own.
        self._start_deadline()
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._closing:
            super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if self._closing:
            return  # the rest of a request already answered: never processed
        self._stop_deadline()
        super().allContentReceived()

    def isSecure(self) -> bool:
        """
        As twisted.web's (is the transport TLS?), asked once per connection:
        every request asks it at least twice.
        """
        if self._secure_transport is not self.transport:
            self._secure = super().isSecure()
            self._secure_transport = self.transport
        return self._secure

    def getHost(self) -> Any:
        """
        The transport's local address, asked once per connection (every
        request asks for it; over TCP that is a system call and a new object).
        """
        if self._addresses_of is not self.transport:
            self._addresses = (super().getHost(), super().getPeer())
            self._addresses_of = self.transport
        return self._addresses[0]

    def getPeer(self) -> Any:
        """
        The transport's peer address, asked once per connection (see L{getHost}).
        """
        if self._addresses_of is not self.transport:
            self.getHost()
        return self._addresses[1]

    def lineLengthExceeded(self, line: bytes) -> None:
        error = GatewayError(f"a request or header line is longer than {self.MAX_LENGTH} bytes", "bad_http")
        self.answer_and_linger(400, b"Bad Request", error)

    def _respondToBadRequestAndDisconnect(self) -> None:
        error = GatewayError("malformed HTTP request (request line, headers or chunking)", "bad_http")
        self.answer_and_linger(400, b"Bad Request", error)

    def _too_slow(self) -> None:
        self._deadline = None
        error = GatewayError("the request was not received in time", "request_timeout")
        self.answer_and_linger(408, b"Request Timeout", error)

    def answer_and_linger(self, status: int, reason: bytes, error: GatewayError) -> None:
        """
        Answer C{error} and close the connection lingering: half-close it (on
        TCP with a FIN, under TLS with the close alert), parse nothing more,
        read and discard until the client closes, or for at most
        C{linger_seconds} and C{linger_bytes}.  Only the first call answers.

        @param status: The HTTP status.
        @param reason: Its reason phrase.
        @param error: The error to render as JSON.
        """
        if self._closing or self.transport is None:
            return
        self._closing = True
        self._stop_deadline()
        self.setTimeout(None)
        self._buffer = b""  # stop LineReceiver's loop over what is already read
        self._dataBuffer = []
        self.persistent = False
        secure = ISSLTransport.providedBy(self.transport)
        self.transport.write(error_response(status, reason, error, secure=secure))
        # Nothing more is written: the transport no longer needs to pause us,
        # and must keep reading, so the client's data is taken and dropped.
        producer: Any = self._networkProducer  # the transport, or a stand-in for one that is no producer
        producer.unregisterProducer()
        producer.resumeProducing()
        if secure:
            # TLS's half-close is its close alert: the TLS layer sends it,
            # then keeps reading (and passing on) what arrives until the
            # client's own alert or close, and only then closes the TCP
            # connection.  (The TCP connection's loseWriteConnection, which
            # the TLS transport passes through, would cut the TLS stream.)
            self.transport.loseConnection()
        else:
            half_close = getattr(self.transport, "loseWriteConnection", None)
            if half_close is not None:
                half_close()
        self._linger = self.callLater(self.linger_seconds, self._stop_lingering)

    def _discard(self, data: bytes) -> None:
        self._discarded += len(data)
        if self._discarded > self.linger_bytes:
            self._stop_lingering()

    def _stop_lingering(self) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadline()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        super().connectionLost(reason)

    def _start_deadline(self) -> None:
        if self._deadline is None:
            timeout = getattr(getattr(self, "site", None), "request_timeout", 30.0)
            self._deadline = self.callLater(timeout, self._too_slow)

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None


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
        @param request_timeout: Seconds to receive a whole request (line,
            headers, body), from its first byte.
        @param max_header_bytes: Largest request line plus headers (and so
            the largest single line).
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
        channel.MAX_LENGTH = self.max_header_bytes
        return channel
