"""
A seeded, reproducible fuzzer for the gateway's REST API.

C{fuzz(url, auth, count, seed)} sends C{count} requests over raw sockets
(one connection, kept alive while the gateway keeps it, a new one after
each close) and returns a L{FuzzReport}: answers by status and code,
requests per second, and every answer that breaks the contract of
README.rst, with examples.  Every request carries its expected answer,
computed by the oracles below from the README's rules, so the run checks
more than "no 5xx":

    - never a 5xx, never a dropped or reset connection, never a traceback;
    - every answer has the security headers; every answer but C{/metrics}
      and C{HEAD} is JSON, every error C{{"error": str, "code": str}};
    - the status and code are the ones the README gives for that input;
    - only 400 C{bad_http}, 408 and 413 close the connection;
    - a valid call answers a real result (C{echo} gives its text back).

The mix: valid calls (~10%; a few sessions, reused, so the children stay
few), bodies that are not JSON, not objects, with wrong types, missing
fields, invalid names, huge numbers, deep nesting, unicode oddities, wrong
content types, bad or duplicate C{Authorization} headers, wrong methods,
unknown routes, path tricks, oversized bodies (declared and chunked, sent
whole: the gateway's lingering close must let the client read its 413) and
malformed HTTP.  Slow clients are left out (they cost seconds each).

Run against a gateway (give it high rate limits, or the 429s of the
default C{auth_failure_limit} mask everything after the 20th bad password;
and C{max_body_bytes} small, e.g. 4096, so oversized bodies are cheap)::

    python tests/fuzz_gateway.py http://127.0.0.1:8080 admin PASSWORD [COUNT] [SEED]
        [--max-body-bytes N] [--service NAME]

The sessions its valid calls opened are closed at the end.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import math
import random
import re
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote_to_bytes, urlsplit

__all__ = [
    "CLOSING",
    "SECURITY_HEADERS",
    "SERVICE_NAME",
    "SESSION_ID",
    "TOOL_NAME",
    "Answer",
    "Case",
    "ConnectionDropped",
    "FuzzReport",
    "HTTPClient",
    "authorized",
    "basic",
    "call_expectation",
    "close_sessions",
    "contract_problems",
    "fuzz",
    "header_expectation",
    "header_size",
    "request_bytes",
    "route_expectation",
]

SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)
#: The only answers after which the gateway may close the connection.
CLOSING = frozenset({(400, "bad_http"), (408, "request_timeout"), (413, "body_too_large")})

SERVICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
SESSION_ID = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9_.-]{1,128}")  # not "." or ".."
MAX_SESSION_TIMEOUT = 86400.0
MAX_DEPTH = 64  # README: nesting deeper than 64 levels is invalid_json
MAX_DIGITS = 4300  # README: integers over 4300 digits are invalid_json


# -- the client ------------------------------------------------------------------------------------


class ConnectionDropped(Exception):
    """
    The server closed or reset the connection (or did not answer in time)
    before a whole answer arrived.

    @ivar nothing_read: Not a byte of the answer had arrived.
    """

    def __init__(self, message: str, *, nothing_read: bool = False) -> None:
        super().__init__(message)
        self.nothing_read = nothing_read


@dataclass
class Answer:
    """
    One HTTP answer.

    @ivar closed: The server closed the connection after it (or said it would).
    """

    status: int
    reason: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    closed: bool

    def header(self, name: bytes) -> bytes | None:
        """
        @return: The last value of header C{name} (lower case), or L{None}.
        """
        values = self.all(name)
        return values[-1] if values else None

    def all(self, name: bytes) -> list[bytes]:
        """
        @return: Every value of header C{name} (lower case).
        """
        return [value for key, value in self.headers if key == name]

    def json(self) -> Any:
        """
        @return: The body as strict JSON (no NaN or Infinity).
        @raise ValueError: If it is not.
        """
        return json.loads(self.body.decode("utf-8"), parse_constant=_reject_constant)

    def code(self) -> str | None:
        """
        @return: The C{code} of a JSON error body, or L{None}.
        """
        try:
            body = self.json()
        except ValueError:
            return None
        code = body.get("code") if isinstance(body, dict) else None
        return code if isinstance(code, str) else None

    def __str__(self) -> str:
        return f"{self.status} {self.body[:200]!r}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class HTTPClient:
    """
    A blocking HTTP/1.1 client on a raw socket: sends exactly the bytes it
    is given, reads one answer, keeps the connection while the server does.
    """

    def __init__(self, host: str, port: int, timeout: float = 15.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        self.connections = 0

    @classmethod
    def for_url(cls, url: str, timeout: float = 15.0) -> HTTPClient:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"only http:// URLs are supported, not {url!r}")
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, timeout)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._buffer = b""

    def __enter__(self) -> HTTPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exchange(self, data: bytes, *, head: bool = False) -> Answer:
        """
        Send C{data} (one whole request), read the answer.

        @param head: The request is a HEAD (its answer has no body).
        @raise ConnectionDropped: If no whole answer came.
        """
        reused = self._sock is not None
        try:
            return self._exchange(data, head)
        except ConnectionDropped as error:
            # A kept-alive connection the server had closed in between
            # (idle timeout): the request never arrived; try once afresh.
            if reused and error.nothing_read:
                return self._exchange(data, head)
            raise

    def _exchange(self, data: bytes, head: bool) -> Answer:
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections += 1
        self._buffer = b""
        # The whole request is sent before the answer is read, as simple
        # clients do: after an early answer (413, 400) the gateway must keep
        # reading until then, or the kernel resets the connection.
        try:
            self._sock.sendall(data)
        except OSError as error:
            self.close()
            raise ConnectionDropped(f"sending failed: {type(error).__name__}: {error}", nothing_read=True) from None
        try:
            while True:
                answer = self._read(head)
                if not 100 <= answer.status < 200:
                    break
        except ConnectionDropped:
            self.close()
            raise
        except OSError as error:
            self.close()
            raise ConnectionDropped(f"{type(error).__name__}: {error}") from None
        if answer.closed:
            self.close()
        return answer

    def _fill(self) -> bool:
        assert self._sock is not None
        try:
            data = self._sock.recv(65536)
        except TimeoutError:
            raise ConnectionDropped(f"no answer within {self.timeout:g} s") from None
        except ConnectionResetError:
            raise ConnectionDropped(
                f"reset after {len(self._buffer)} bytes of an answer", nothing_read=not self._buffer
            ) from None
        self._buffer += data
        return bool(data)

    def _read(self, head: bool) -> Answer:
        while b"\r\n\r\n" not in self._buffer:
            if not self._fill():
                raise ConnectionDropped(
                    f"closed after {len(self._buffer)} bytes of an answer", nothing_read=not self._buffer
                )
        head_bytes, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        lines = head_bytes.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        status_text, _, reason = rest.partition(b" ")
        if not status_text.isdigit():
            raise ConnectionDropped(f"not an HTTP answer: {lines[0][:80]!r}")
        status = int(status_text)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        names = dict(headers)
        if head or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif names.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = self._chunked()
        elif b"content-length" in names:
            length = int(names[b"content-length"])
            while len(self._buffer) < length:
                if not self._fill():
                    raise ConnectionDropped(f"closed within a body of {length} bytes")
            body, self._buffer = self._buffer[:length], self._buffer[length:]
        else:
            while self._fill():
                pass
            body, self._buffer = self._buffer, b""
            names[b"connection"] = b"close"
        closed = names.get(b"connection", b"").lower() == b"close" or version == b"HTTP/1.0"
        return Answer(status, reason, version, headers, body, closed)

    def _chunked(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self._buffer:
                if not self._fill():
                    raise ConnectionDropped("closed within a chunked body")
            size_line, self._buffer = self._buffer.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(self._buffer) < size + 2:
                if not self._fill():
                    raise ConnectionDropped("closed within a chunk")
            body += self._buffer[:size]
            self._buffer = self._buffer[size + 2 :]
            if size == 0:
                return body


# -- what every answer must be -------------------------------------------------------------------------


def contract_problems(answer: Answer, *, head: bool = False, json_body: bool = True) -> list[str]:
    """
    @param head: The request was a HEAD (no body to check).
    @param json_body: The answer must be JSON (all but a 200 of C{/metrics}).
    @return: How C{answer} breaks the README's contract for every answer.
    """
    problems = []
    if answer.status >= 500:
        problems.append(f"5xx: {answer.status}")
    elif answer.status >= 300 and answer.status < 400:
        problems.append(f"3xx: {answer.status}")
    if b"Traceback" in answer.body or b'File "' in answer.body:
        problems.append("traceback in the body")
    if answer.header(b"server") != b"mcpgateway":
        problems.append(f"Server header {answer.header(b'server')!r}")
    missing = [name.decode() for name, value in SECURITY_HEADERS if answer.header(name) != value]
    if missing:
        problems.append(f"security headers missing: {', '.join(missing)}")
    if not json_body or head:
        return problems
    if not (answer.header(b"content-type") or b"").startswith(b"application/json"):
        problems.append(f"content type {answer.header(b'content-type')!r}")
    try:
        body = answer.json()
    except (ValueError, UnicodeDecodeError):
        problems.append("body is not JSON")
        return problems
    shaped = isinstance(body, dict) and isinstance(body.get("error"), str) and isinstance(body.get("code"), str)
    if answer.status >= 400 and not shaped:
        problems.append("error body is not {'error': str, 'code': str}")
    code = body.get("code") if isinstance(body, dict) else None
    if answer.closed and (answer.status, code) not in CLOSING:
        problems.append(f"connection closed after {answer.status} {code}")
    return problems


# -- oracles: the README's rules ------------------------------------------------------------------------


def call_expectation(body: bytes, content_types: Iterable[bytes] = (b"application/json",)) -> tuple[int, Any]:
    """
    What C{POST /services/<existing>/call} with valid credentials answers.

    @param content_types: The C{Content-Type} headers sent (the last one counts).
    @return: C{(status, code)} of the error, or C{(200, body)} with the
        parsed body of a valid call.
    """
    types = list(content_types)
    main = (types[-1] if types else b"").split(b";")[0].strip().lower()
    if main and main != b"application/json" and not main.endswith(b"+json"):
        return 415, "unsupported_media_type"
    try:
        value = strict_json(body)
    except ValueError:
        return 400, "invalid_json"
    if not isinstance(value, dict):
        return 400, "invalid_request"
    tool, session_id = value.get("tool"), value.get("session_id")
    if not isinstance(tool, str) or not TOOL_NAME.fullmatch(tool):
        return 400, "invalid_tool_name"
    if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id) or session_id.startswith("mcp-"):
        return 400, "invalid_session_id"  # "mcp-": the MCP endpoint's sessions
    for name in ("arguments", "metadata"):
        if value.get(name) is not None and not isinstance(value[name], dict):
            return 400, f"invalid_{name}"
    timeout = value.get("timeout", 300)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_SESSION_TIMEOUT:
        return 400, "invalid_timeout"
    return 200, value


def strict_json(body: bytes) -> Any:
    """
    The README's JSON: UTF-8 without a byte order mark, no C{NaN} or
    C{Infinity}, no number that overflows to infinity, no integer over
    L{MAX_DIGITS} digits, nested at most L{MAX_DEPTH} levels.

    @return: The value.
    @raise ValueError: If C{body} is not such JSON.
    """

    def finite(text: str) -> float:
        number = float(text)
        if not math.isfinite(number):
            raise ValueError(f"{text[:20]} overflows")
        return number

    def integer(text: str) -> int:
        if len(text.lstrip("-")) > MAX_DIGITS:
            raise ValueError("too many digits")
        return int(text)

    text = body.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if text.startswith("\ufeff"):
        raise ValueError("byte order mark")
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=finite, parse_int=integer)
    except RecursionError:
        raise ValueError("nested too deep") from None
    # The depth, without recursion: the outermost array or object is level 1.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise ValueError("nested too deep")
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return value


def basic(user: str, password: str) -> bytes:
    """
    @return: The C{Authorization} value for HTTP Basic.
    """
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def authorized(values: list[bytes], user: str, password: str, token: str = "") -> bool:
    """
    Whether these C{Authorization} headers authenticate (the last one counts;
    the scheme is case-insensitive; spaces around the value are ignored).
    """
    if not values or not values[-1]:
        return False
    scheme, _, value = values[-1].strip().partition(b" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == b"bearer":
        return bool(token) and value == token.encode()
    if scheme != b"basic" or not (user and password):
        return False
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return decoded == f"{user}:{password}".encode()


def header_size(data: bytes) -> int:
    """
    @return: What twisted.web counts against C{max_header_bytes}: the request
        line and header lines of C{data}, without their CRLFs.
    """
    return sum(len(line) for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"))


def header_expectation(lines: Iterable[bytes]) -> bool:
    """
    @param lines: Header lines (without CRLF).
    @return: Whether twisted.web accepts them (otherwise: 400 bad_http).
    """
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or not re.fullmatch(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            return False
        if any(byte in value.strip(b" \t") for byte in b"\0\r\n"):
            return False
    return True


ROUTES: list[tuple[re.Pattern[str], frozenset[str], str]] = [
    (re.compile(r"/health"), frozenset({"GET", "HEAD"}), "health"),
    (re.compile(r"/services"), frozenset({"GET", "HEAD"}), "services"),
    (re.compile(r"/services/([^/]+)/tools"), frozenset({"GET", "HEAD"}), "tools"),
    (re.compile(r"/services/([^/]+)/call"), frozenset({"POST"}), "call"),
    (re.compile(r"/metrics"), frozenset({"GET", "HEAD"}), "metrics"),
    (re.compile(r"/sessions"), frozenset({"GET", "HEAD"}), "sessions"),
    (re.compile(r"/sessions/([^/]+)"), frozenset({"DELETE"}), "session"),
    (re.compile(r"/mcp"), frozenset({"GET", "HEAD", "POST", "DELETE"}), "mcp"),
    (re.compile(r"/services/([^/]+)/mcp"), frozenset({"GET", "HEAD", "POST", "DELETE"}), "mcp"),
    # The admin dashboard (an HTML page and its actions; never generated as unknown routes).
    (re.compile(r"/admin"), frozenset({"GET", "HEAD"}), "admin"),
    (re.compile(r"/admin/(login|logout|drain)"), frozenset({"POST"}), "admin"),
    (re.compile(r"/admin/stats"), frozenset({"GET", "HEAD"}), "admin"),
    (re.compile(r"/admin/services/([^/]+)/restart"), frozenset({"POST"}), "admin"),
    (re.compile(r"/admin/static/([^/]+)"), frozenset({"GET", "HEAD"}), "admin"),
]


@dataclass(frozen=True)
class Route:
    """
    Where a request target leads: C{name} (a route of L{ROUTES}, or
    C{"not_found"}, C{"method_not_allowed"}, C{"bad_http"} or
    C{"invalid_url"}) and the decoded path parameter.
    """

    name: str
    param: str | None = None
    why: str = ""


def path_info(target: bytes) -> str | None:
    """
    The decoded path the routes see: twisted splits the path on C{/} and
    unquotes each segment, Klein joins them again and decodes UTF-8.

    @return: It, or L{None} if it is not UTF-8.
    """
    path = target.split(b"?", 1)[0]
    joined = b"/".join(unquote_to_bytes(segment) for segment in path[1:].split(b"/"))
    if not joined.startswith(b"/"):
        joined = b"/" + joined
    try:
        return joined.decode("utf-8")
    except UnicodeDecodeError:
        return None


def route_expectation(method: bytes, target: bytes) -> Route:
    """
    Which route (or error) a request line leads to, before credentials.
    """
    if not re.fullmatch(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+", method):
        return Route("bad_http", why="method is not a token")
    if not target or any(byte <= 32 or byte > 176 for byte in target):
        return Route("bad_http", why="request target has bytes twisted refuses")
    if target == b"*":
        return Route("not_found", why="the target '*'")
    path = path_info(target)
    if path is None:
        return Route("invalid_url", why="the path is not UTF-8")
    if "//" in path:
        return Route("not_found", why="an empty path segment")
    name = method.decode("ascii").upper()  # werkzeug matches methods case-insensitively
    for pattern, methods, route in ROUTES:
        match = pattern.fullmatch(path)
        if match:
            if name not in methods:
                return Route("method_not_allowed", why=",".join(sorted(methods)))
            return Route(route, match.group(1) if match.groups() else None)
    return Route("not_found")


# -- the cases --------------------------------------------------------------------------------------


@dataclass
class Case:
    """
    One request and what it must be answered.

    @ivar expect: Acceptable C{(status, code)} pairs; code L{None} for a
        success; empty: anything within the contract.
    @ivar session: The session a valid call opens or uses.
    @ivar echo: The text C{echo} must give back.
    """

    kind: str
    data: bytes
    expect: frozenset[tuple[int, str | None]]
    head: bool = False
    json_body: bool = True
    session: str | None = None
    echo: str | None = None

    def describe(self) -> str:
        return f"{self.kind}: {self.data[:300]!r}"


def request_bytes(
    method: bytes,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes | None = None,
    *,
    length: bool = True,
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """
    @return: A whole request (C{Content-Length} added for a body unless
        C{length} is false).
    """
    lines = [method + b" " + target + b" " + version, b"Host: fuzz"]
    lines += [name + b": " + value for name, value in headers]
    if body is not None and length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


# Methods that are wrong everywhere, and ones wrong on some routes (werkzeug
# matches methods case-insensitively, so "get" is GET).
WRONG_METHODS = (b"PUT", b"PATCH", b"OPTIONS", b"TRACE", b"CONNECT", b"FOO", b"M-SEARCH")
WRONG_METHODS += (b"GET", b"POST", b"DELETE", b"get", b"post", b"delete")
_HEADER_BYTES = bytes(byte for byte in range(1, 256) if byte not in b"\r\n")

UNICODE_POOLS = (
    "abcxyzABCXYZ0129 _-.",
    " \t\n\r",
    "\x00\x01\x1b\x7f",
    "éüßñÅø",
    "\u202e\u200b\u200d\ufeff\ufffe\uffff\u0301",
    "中文日本語한국어",
    "😀🧪𝄞\U0010ffff",
    "\\\"'/<>&%{}[]",
    "\ud800\udbff\udc00\udfff",  # lone surrogates: JSON can escape them
)


class Generator:
    """
    Builds seeded random L{Case}s for one gateway.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        service: str,
        tool: str,
        echo: bool,
        auth: bytes,
        user: str,
        password: str,
        token: str,
        sessions: list[str],
        max_body_bytes: int,
        max_header_bytes: int,
    ) -> None:
        self.rng = rng
        self.service = service
        self.tool = tool
        self.echo = echo
        self.auth = auth
        self.user = user
        self.password = password
        self.token = token
        self.sessions = sessions
        self.limit = max_body_bytes
        self.header_limit = max_header_bytes
        self.kinds: list[tuple[str, int, Callable[[], Case]]] = [
            ("valid_call", 10, self.valid_call),
            ("valid_read", 2, self.valid_read),
            ("not_json", 8, self.not_json),
            ("not_object", 3, self.not_object),
            ("wrong_types", 8, self.wrong_types),
            ("missing_fields", 5, self.missing_fields),
            ("invalid_names", 8, self.invalid_names),
            ("huge_numbers", 4, self.huge_numbers),
            ("deep_nesting", 4, self.deep_nesting),
            ("unicode", 6, self.unicode),
            ("content_type", 6, self.content_type),
            ("bad_auth", 8, self.bad_auth),
            ("wrong_method", 6, self.wrong_method),
            ("unknown_route", 6, self.unknown_route),
            ("path_tricks", 8, self.path_tricks),
            ("oversized", 4, self.oversized),
            ("malformed_http", 4, self.malformed_http),
        ]
        self._weights = [weight for _, weight, _ in self.kinds]

    # -- helpers

    def text(self, size: int, *, surrogates: bool = True) -> str:
        pools = UNICODE_POOLS if surrogates else UNICODE_POOLS[:-1]
        return "".join(self.rng.choice(self.rng.choice(pools)) for _ in range(self.rng.randint(0, size)))

    def encode(self, value: Any) -> bytes:
        """
        JSON as a client might send it: compact or not, escaped or raw UTF-8
        (raw only where that is UTF-8: lone surrogates stay escaped).
        """
        separators = self.rng.choice([(",", ":"), (", ", ": "), (" ,", " : ")])
        if self.rng.random() < 0.5:
            text = json.dumps(value, separators=separators, ensure_ascii=False)
            try:
                return text.encode("utf-8")
            except UnicodeEncodeError:
                pass
        return json.dumps(value, separators=separators).encode()

    def good_body(self, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"tool": self.tool, "session_id": self.rng.choice(self.sessions)}
        if self.echo:
            body["arguments"] = {"text": self.text(30)}
        if self.rng.random() < 0.3:
            body["timeout"] = self.rng.choice([1, 30.5, 300, 86400, 1e-3])
        if self.rng.random() < 0.2:
            body["metadata"] = {"call": self.text(10), "n": self.rng.randint(-(10**20), 10**20)}
        if self.rng.random() < 0.2:
            body[self.text(8)] = self.text(8)  # unknown fields are ignored
        body.update(fields)
        return body

    def bad_name(self, limit: int) -> str:
        choice = self.rng.randrange(8)
        name = [
            "",
            "../etc/passwd",
            "a b",
            "a/b",
            "x" * (limit + self.rng.randint(1, 40)),
            self.text(20, surrogates=True),
            "s\x00",
            "名前",
        ][choice]
        pattern = SERVICE_NAME if limit == 64 else TOOL_NAME
        return name if not pattern.fullmatch(name) else name + "!"

    def call(self, kind: str, body: bytes, headers: Iterable[tuple[bytes, bytes]] = (), **case: Any) -> Case:
        """
        A C{POST /services/<service>/call} with valid credentials and C{body};
        its expectation from L{call_expectation}.
        """
        headers = list(headers)
        types = [value for name, value in headers if name.lower() == b"content-type"]
        if not types and self.rng.random() < 0.9:
            headers.insert(0, (b"Content-Type", b"application/json"))
            types = [b"application/json"]
        data = request_bytes(b"POST", b"/services/%s/call" % self.service.encode(), [self.auth, *headers], body)
        return self.expect_call(kind, data, body, types, **case)

    def expect_call(self, kind: str, data: bytes, body: bytes, types: list[bytes], **case: Any) -> Case:
        if len(body) > self.limit:
            return Case(kind, data, frozenset({(413, "body_too_large")}), **case)
        status, outcome = call_expectation(body, types)
        if status != 200:
            return Case(kind, data, frozenset({(status, outcome)}), **case)
        session = outcome["session_id"]
        if session not in self.sessions:
            raise _Again  # a valid call outside the session pool would start a child more
        echo = None
        if self.echo and outcome["tool"] == "echo":
            arguments = outcome.get("arguments") or {}
            echo = str(arguments.get("text", "")) if isinstance(arguments, dict) else None
        expect = {(200, None)}
        if outcome["tool"] != self.tool:
            expect.add((422, "mcp_error"))  # an unknown tool: isError (200) or a JSON-RPC error
        return Case(kind, data, frozenset(expect), session=session, echo=echo, **case)

    # -- kinds

    def valid_call(self) -> Case:
        body = self.good_body()
        headers: list[tuple[bytes, bytes]] = [
            (b"Content-Type", self.rng.choice([b"application/json", b"application/json; charset=utf-8"]))
        ]
        if self.rng.random() < 0.2:
            # Chunked, in a few pieces.
            raw = self.encode(body)
            cuts = sorted(self.rng.sample(range(1, len(raw)), min(3, len(raw) - 1)))
            pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
            chunked = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
            headers.append((b"Transfer-Encoding", b"chunked"))
            data = request_bytes(
                b"POST", b"/services/%s/call" % self.service.encode(), [self.auth, *headers], chunked, length=False
            )
            return self.expect_call("valid_call", data, raw, [headers[0][1]])
        return self.call("valid_call", self.encode(body), headers)

    def valid_read(self) -> Case:
        method, target = self.rng.choice(
            [
                (b"GET", b"/health"),
                (b"HEAD", b"/health"),
                (b"GET", b"/services"),
                (b"GET", b"/sessions"),
                (b"GET", b"/services/%s/tools" % self.service.encode()),
                (b"GET", b"/metrics"),
            ]
        )
        data = request_bytes(method, target, [self.auth])
        return Case(
            "valid_read", data, frozenset({(200, None)}), head=method == b"HEAD", json_body=target != b"/metrics"
        )

    def not_json(self) -> Case:
        valid = self.encode(self.good_body())
        body = self.rng.choice(
            [
                b"",
                b"   \r\n\t ",
                b"{not json",
                valid[: self.rng.randrange(1, len(valid))],
                valid + b"}",
                valid + b" trailing",
                b'{"tool": NaN, "session_id": "s"}',
                b'{"tool": "echo", "session_id": "s", "timeout": Infinity}',
                b'{"tool": "echo", "session_id": "s", "timeout": -Infinity}',
                b"{'tool': 'echo'}",
                b'{"tool": "echo",}',
                b'{"tool": "echo" "session_id": "s"}',
                b"\xff\xfe\x00",
                b'{"tool": "\xff"}',
                b'{"tool": "ech\xc3"}',
                bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 200))),
                b"\x00" * self.rng.randint(1, 10),
                b"\x0b{}",
            ]
        )
        return self.call("not_json", body)

    def not_object(self) -> Case:
        value = self.rng.choice([[], [self.good_body()], "text", 1, -1.5, None, True, False, 10**30])
        return self.call("not_object", self.encode(value))

    def wrong_types(self) -> Case:
        field_name = self.rng.choice(["tool", "session_id", "arguments", "metadata", "timeout"])
        wrong = self.rng.choice([0, 1.5, True, False, None, [], ["echo"], {}, {"a": 1}, "300", "", "x"])
        return self.call("wrong_types", self.encode(self.good_body(**{field_name: wrong})))

    def missing_fields(self) -> Case:
        body = self.good_body()
        for name in self.rng.sample(["tool", "session_id", "arguments"], self.rng.randint(1, 3)):
            body.pop(name, None)
        return self.call("missing_fields", self.encode(body))

    def invalid_names(self) -> Case:
        if self.rng.random() < 0.5:
            body = self.good_body(tool=self.bad_name(128))
        elif self.rng.random() < 0.1:
            body = self.good_body(session_id="mcp-" + self.rng.choice(self.sessions))
        else:
            body = self.good_body(session_id=self.bad_name(128))
        return self.call("invalid_names", self.encode(body))

    def huge_numbers(self) -> Case:
        digits = self.rng.randint(20, min(3500, self.limit - 200))
        big = int("9" * digits) * self.rng.choice([1, -1])
        choice = self.rng.randrange(4)
        if choice == 0:
            body = self.good_body(timeout=big)
        elif choice == 1:
            body = self.good_body(timeout=self.rng.choice([1e308, -1e308, 5e-324, 86400.0000001, 0, -0.0]))
        elif choice == 2:
            raw = b'{"tool": "%s", "session_id": "%s", "timeout": %s}' % (
                self.tool.encode(),
                self.rng.choice(self.sessions).encode(),
                self.rng.choice([b"1e400", b"-1e400", b"1" + b"0" * 400 + b".5", b"1e-400"]),
            )
            return self.call("huge_numbers", raw)
        else:
            body = self.good_body(arguments={"text": "n", "n": big, "f": 1.7976931348623157e308})
            if self.rng.random() < 0.5:
                # Overflows to infinity: invalid_json, wherever it is.
                raw = self.encode(body).replace(b"1.7976931348623157e+308", b"-1e400")
                return self.call("huge_numbers", raw)
        return self.call("huge_numbers", self.encode(body))

    def deep_nesting(self) -> Case:
        depth = self.rng.choice(
            [self.rng.randint(1, MAX_DEPTH - 2), self.rng.randint(MAX_DEPTH - 2, MAX_DEPTH + 2), 2000]
        )
        opener, closer = self.rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
        nested = opener * depth + b"1" + closer * depth
        where = self.rng.randrange(3)
        if where == 0:
            body = nested
        else:
            name = b"arguments" if where == 1 else b"metadata"
            body = b'{"tool": "%s", "session_id": "%s", "%s": {"text": "deep", "d": %s}}' % (
                self.tool.encode(),
                self.rng.choice(self.sessions).encode(),
                name,
                nested,
            )
        return self.call("deep_nesting", body)

    def unicode(self) -> Case:
        choice = self.rng.randrange(4)
        if choice == 0 and self.echo:
            body = self.good_body(arguments={"text": self.text(60)})
        elif choice == 1:
            body = self.good_body(tool=self.text(20) + self.rng.choice("é\x00\u202e😀\ud800"))
        elif choice == 2:
            body = self.good_body(session_id=self.rng.choice(self.sessions) + self.rng.choice("\x00é\ufeff\ud800 "))
        else:
            body = self.good_body(metadata={self.text(5): self.text(40)})
        if self.rng.random() < 0.1:
            # Not UTF-8 (json.loads would guess these): invalid_json.
            raw = json.dumps(body).encode(self.rng.choice(["utf-16", "utf-32", "utf-16-le", "utf-8-sig"]))
            return self.call("unicode", raw)
        return self.call("unicode", self.encode(body))

    def content_type(self) -> Case:
        values = [
            b"text/plain",
            b"application/x-www-form-urlencoded",
            b"multipart/form-data; boundary=x",
            b"application/xml",
            b"text/json",
            b"application/jsonx",
            b"application/problem+json",
            b"APPLICATION/JSON",
            b"application/json;charset=latin-1",
            b"application/json ; q=1",
            b";",
            b"*/*",
            b"\xe9/\xff",
            b"application/json, text/plain",
            b"x" * self.rng.randint(1, 3000),
        ]
        headers = [(b"Content-Type", self.rng.choice(values)) for _ in range(self.rng.choice([1, 1, 1, 2]))]
        return self.call("content_type", self.encode(self.good_body()), headers)

    def bad_auth(self) -> Case:
        good = basic(self.user, self.password)
        b64 = base64.b64encode
        variants = [
            b"",
            b"Basic",
            b"Basic ",
            b"Basic !!!!",
            b"Basic " + b64(b"no-colon"),
            b"Basic " + b64(f"{self.user}:wrong".encode()),
            b"Basic " + b64(f"wrong:{self.password}".encode()),
            b"Basic " + b64(f"{self.user}:{self.password}\x00".encode()),
            b"Basic " + b64(f"{self.user}:{self.password}".encode())[:-2],
            b"Basic " + b64(b"\xff\xfe:\xfd"),
            b"Basic " + b"A" * self.rng.randint(100, 8000),
            b"Bearer",
            b"Bearer " + self.text(20, surrogates=False).encode().translate(None, b"\0\r\n"),
            b"Digest username=x",
            b"basic " + good.split(b" ", 1)[1],
            b"BASIC    " + good.split(b" ", 1)[1] + b"   ",
            good + b" extra",
            good.replace(b"Basic ", b"Basic\t"),
            bytes(self.rng.choice(_HEADER_BYTES) for _ in range(self.rng.randint(1, 60))),
            b"Basic a\x00b",
            good,
        ]
        values = [self.rng.choice(variants) for _ in range(self.rng.choice([1, 1, 1, 2, 3]))]
        headers = [(b"Authorization", value) for value in values]
        method, target, body = self.rng.choice(
            [
                (b"POST", b"/services/%s/call" % self.service.encode(), self.encode(self.good_body())),
                (b"GET", b"/services/%s/tools" % self.service.encode(), None),
                (b"DELETE", b"/sessions/fuzz-no-such-session", None),
                (b"GET", b"/services", None),
                (b"GET", b"/sessions", None),
            ]
        )
        if body is not None:
            headers.append((b"Content-Type", b"application/json"))
        data = request_bytes(method, target, headers, body)
        lines = [name + b": " + value for name, value in headers]
        if not header_expectation(lines) or header_size(data) > self.header_limit:
            return Case("bad_auth", data, frozenset({(400, "bad_http")}))
        stripped = [value.strip(b" \t") for value in values]
        if not authorized(stripped, self.user, self.password, self.token):
            return Case("bad_auth", data, frozenset({(401, "unauthorized")}))
        if method == b"POST":
            assert body is not None
            return self.expect_call("bad_auth", data, body, [b"application/json"])
        if method == b"DELETE":
            return Case("bad_auth", data, frozenset({(404, "session_not_found")}))
        return Case("bad_auth", data, frozenset({(200, None)}))

    def wrong_method(self) -> Case:
        method = self.rng.choice(WRONG_METHODS)
        target = self.rng.choice(
            [
                b"/services/%s/call" % self.service.encode(),
                b"/services/%s/tools" % self.service.encode(),
                b"/sessions/%s" % self.rng.choice(self.sessions).encode(),
                b"/health",
                b"/services",
                b"/sessions",
                b"/metrics",
            ]
        )
        route = route_expectation(method, target)
        if route.name != "method_not_allowed":
            raise _Again
        body = self.encode(self.good_body()) if self.rng.random() < 0.3 else None
        data = request_bytes(method, target, [self.auth], body)
        return Case("wrong_method", data, frozenset({(405, "method_not_allowed")}))

    def segment(self) -> bytes:
        choice = self.rng.randrange(10)
        if choice == 0:
            return self.rng.choice([b"..", b".", b"%2e%2e", b"%2E", b"...", b"~"])
        if choice == 1:
            return quote(self.text(12, surrogates=False), safe="").encode()
        if choice == 2:
            return self.rng.choice([b"%00", b"a%00b", b"%0a", b"%20", b"%09", b"%7f", b"\x7f"])
        if choice == 3:
            return b"a" * self.rng.randint(60, 4000)
        if choice == 4:
            return self.rng.choice([b"x%2Fy", b"..%2F..%2Fetc%2Fpasswd", b"%2F..", b"x%2F"])
        if choice == 5:
            return self.rng.choice([b"%252e%252e", b"%25", b"%zz", b"%", b"x%3By", b"x;y", b"x#y", b"x%23y"])
        if choice == 6:
            return self.rng.choice([b"fuzz-none", b"x" * 64, b"y" * 65, b"z" * 128, b"w" * 129, b"A-b_c.d"])
        if choice == 7:
            return "é😀中".encode()  # raw UTF-8 in the request line
        if choice == 8:
            return self.service.encode()
        return "".join(self.rng.choice("abcXYZ019_-.") for _ in range(self.rng.randint(1, 20))).encode()

    def path_tricks(self) -> Case:
        segment = self.segment()
        if self.rng.random() < 0.1:
            # Not UTF-8 once decoded, or an empty segment.
            segment = self.rng.choice([b"%ff", b"%c3", b"\x80", b"/", b"%2F"]) + segment
        elif self.rng.random() < 0.03:
            segment = b"a" * self.rng.randint(self.header_limit - 40, self.header_limit + 400)  # a line too long
        template = self.rng.choice([b"/sessions/%s", b"/services/%s/tools", b"/services/%s/call"])
        target = template % segment
        if self.rng.random() < 0.1:
            target += b"?x=" + self.rng.choice([b"1", b"%ff", b"../..", b"%00"])
        return self.routed("path_tricks", target)

    def routed(self, kind: str, target: bytes) -> Case:
        """
        A request for C{target} with the method its template is for, and its
        expectation from L{route_expectation}.
        """
        method = {b"sessions": b"DELETE", b"services": b"GET"}.get(target.split(b"/")[1], b"GET")
        if target.endswith(b"/call") or b"/call?" in target:
            method = b"POST"
        route = route_expectation(method, target)
        headers = [self.auth]
        body = None
        if method == b"POST":
            headers.append((b"Content-Type", b"application/json"))
            body = self.encode(self.good_body())
        data = request_bytes(method, target, headers, body)
        if route.name == "bad_http" or header_size(data) > self.header_limit:
            return Case(kind, data, frozenset({(400, "bad_http")}))
        if route.name == "invalid_url":
            return Case(kind, data, frozenset({(400, "invalid_url")}))
        if route.name in ("not_found", "method_not_allowed"):
            code = route.name
            return Case(kind, data, frozenset({(404 if code == "not_found" else 405, code)}))
        if route.name in ("mcp", "health", "services", "sessions", "metrics"):
            raise _Again
        param = route.param or ""
        if route.name == "session":
            if not SESSION_ID.fullmatch(param):
                return Case(kind, data, frozenset({(400, "invalid_session_id")}))
            if param in self.sessions:
                raise _Again  # do not close the pool's sessions
            return Case(kind, data, frozenset({(404, "session_not_found")}))
        if not SERVICE_NAME.fullmatch(param):
            return Case(kind, data, frozenset({(400, "invalid_service_name")}))
        if param != self.service:
            return Case(kind, data, frozenset({(404, "service_not_found")}))
        if route.name == "tools":
            return Case(kind, data, frozenset({(200, None)}))
        assert body is not None
        return self.expect_call(kind, data, body, [b"application/json"])

    def unknown_route(self) -> Case:
        count = self.rng.randint(1, 4)
        words = [b"services", b"sessions", b"health", b"tools", b"call", b"admin", b"api", b"v1", b"mcpx"]
        parts = [self.rng.choice([*words, self.segment()]) for _ in range(count)]
        target = b"/" + b"/".join(parts) + self.rng.choice([b"", b"", b"/"])
        method = self.rng.choice([b"GET", b"POST", b"DELETE", b"PUT", b"HEAD"])
        route = route_expectation(method, target)
        data = request_bytes(method, target, [self.auth])
        if route.name != "not_found" or header_size(data) > self.header_limit:
            raise _Again
        return Case("unknown_route", data, frozenset({(404, "not_found")}), head=method == b"HEAD")

    def oversized(self) -> Case:
        target = b"/services/%s/call" % self.service.encode()
        headers = [self.auth, (b"Content-Type", b"application/json")]
        expect = frozenset({(413, "body_too_large")})
        if self.rng.random() < 0.5 or self.limit > 65536:
            # Declared: answered at once; a modest body is sent all the same,
            # as a simple client does (it must still read the 413 after it).
            size = self.rng.choice([self.limit + 1, self.limit * 2, self.limit * 16, 10**12, 10**30])
            body = b"x" * size if size <= 65536 and self.rng.random() < 0.7 else b""
            data = request_bytes(b"POST", target, [*headers, (b"Content-Length", b"%d" % size)]) + body
            return Case("oversized", data, expect)
        size = self.rng.randint(self.limit + 1, self.limit * 3)
        chunks = []
        while size > 0:
            piece = min(size, self.rng.randint(1, self.limit))
            chunks.append(b"%x\r\n%s\r\n" % (piece, b"x" * piece))
            size -= piece
        data = request_bytes(
            b"POST", target, [*headers, (b"Transfer-Encoding", b"chunked")], b"".join(chunks), length=False
        )
        return Case("oversized", data, expect)

    def malformed_http(self) -> Case:
        auth = b"Authorization: " + self.auth[1] + b"\r\n"
        post = b"POST /services/%s/call HTTP/1.1\r\nHost: x\r\n" % self.service.encode() + auth
        per_line = self.header_limit // 2 + 1  # two such lines are over the limit, none alone
        templates = [
            b"NONSENSE\r\n\r\n",
            b"GET /health\r\n\r\n",
            b"GET /health HTTP/2.0\r\n\r\n",
            b"GET /health HTTP/1.2\r\n\r\n",
            b"GET /health http/1.1\r\n\r\n",
            b"GET  /health HTTP/1.1\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
            b"GE(T /health HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 32 + b"\r\n\r\n",
            b"\r\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: x\r\n: empty name\r\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
            post + b"Content-Length: -1\r\n\r\n",
            post + b"Content-Length: abc\r\n\r\n",
            post + b"Content-Length: +2\r\n\r\n{}",
            post + b"Content-Length: 1.5\r\n\r\n{}",
            post + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
            post + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            post + b"Transfer-Encoding: gzip\r\n\r\n",
            post + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            post + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
            post + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n",
            post + b"Transfer-Encoding: chunked\r\n\r\n-2\r\n{}\r\n0\r\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n",
            b"GET /health HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, b"a" * per_line) for i in range(3))
            + b"\r\n",
            # One line longer than max_header_bytes: answered before its end.
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * self.header_limit + b"\r\n\r\n",
            b"GET /" + b"a" * self.header_limit + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        ]
        return Case("malformed_http", self.rng.choice(templates), frozenset({(400, "bad_http")}))

    def case(self) -> Case:
        while True:
            kind = self.rng.choices(self.kinds, self._weights)[0]
            try:
                return kind[2]()
            except _Again:
                continue


class _Again(Exception):
    """
    The random draw made a case the run does not want: draw again.
    """


# -- the run -------------------------------------------------------------------------------------------


@dataclass
class Problem:
    """
    One request whose answer broke the contract or the expectation.
    """

    kind: str
    request: bytes
    answer: str
    why: list[str]

    def __str__(self) -> str:
        return f"[{self.kind}] {'; '.join(self.why)}\n    request: {self.request[:300]!r}\n    answer:  {self.answer}"


@dataclass
class FuzzReport:
    """
    What a fuzz run saw.

    @ivar by_status: Answers by HTTP status.
    @ivar by_code: Answers by C{"<status> <code>"} (C{"200"} for successes).
    @ivar by_kind: Requests by kind of input.
    @ivar problems: Every answer that broke the contract or the expectation
        (the first C{max_examples} kept whole).
    @ivar sessions: The sessions valid calls opened (still open).
    @ivar pool: Every session id valid calls may use.
    """

    seed: int
    requests: int = 0
    seconds: float = 0.0
    connections: int = 0
    drops: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    by_code: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    problem_count: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    sessions: set[str] = field(default_factory=set)
    pool: list[str] = field(default_factory=list)
    max_examples: int = 20

    @property
    def rate(self) -> float:
        """
        @return: Requests per second.
        """
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.by_status.items() if status >= 500)

    @property
    def dropped(self) -> int:
        return self.drops

    @property
    def non_json(self) -> int:
        return self.problem_count["body is not JSON"]

    @property
    def ok(self) -> bool:
        """
        @return: No problem at all.
        """
        return not self.problem_count

    def add_problem(self, case: Case, answer: Answer | None, why: list[str]) -> None:
        for reason in why:
            self.problem_count[reason.split(":")[0]] += 1
        if len(self.problems) < self.max_examples:
            self.problems.append(Problem(case.kind, case.data, str(answer) if answer else "(none)", why))

    def summary(self) -> str:
        """
        @return: The figures, for a log.
        """
        lines = [
            f"fuzz seed {self.seed}: {self.requests} requests in {self.seconds:.1f} s "
            f"({self.rate:.0f} requests/s, {self.connections} connections)",
            "  by status: " + ", ".join(f"{status}: {n}" for status, n in sorted(self.by_status.items())),
            "  by code:   " + ", ".join(f"{code}: {n}" for code, n in sorted(self.by_code.items())),
            "  by kind:   " + ", ".join(f"{kind}: {n}" for kind, n in sorted(self.by_kind.items())),
            f"  5xx: {self.server_errors}, non-JSON: {self.non_json}, dropped: {self.dropped}, "
            f"sessions opened: {len(self.sessions)}",
        ]
        if self.problem_count:
            lines.append("  PROBLEMS: " + ", ".join(f"{k}: {n}" for k, n in sorted(self.problem_count.items())))
            lines += ["  " + str(problem).replace("\n", "\n  ") for problem in self.problems]
        else:
            lines.append("  no problems")
        return "\n".join(lines)


def _credentials(auth: tuple[str, str] | str) -> tuple[tuple[bytes, bytes], str, str, str]:
    if isinstance(auth, str):
        return (b"Authorization", b"Bearer " + auth.encode()), "", "", auth
    user, password = auth
    return (b"Authorization", basic(user, password)), user, password, ""


def _discover(client: HTTPClient, header: tuple[bytes, bytes], service: str | None) -> tuple[str, str, bool]:
    """
    @return: The service to call, a tool to call, and whether it is C{echo}.
    """
    answer = client.exchange(request_bytes(b"GET", b"/services", [header]))
    if answer.status != 200:
        raise SystemExit(f"GET /services answered {answer}")
    services = answer.json()
    if not services:
        raise SystemExit("the gateway has no enabled service")
    name = service or sorted(services)[0]
    answer = client.exchange(request_bytes(b"GET", b"/services/%s/tools" % name.encode(), [header]))
    if answer.status != 200:
        raise SystemExit(f"GET /services/{name}/tools answered {answer}")
    tools = answer.json()["tools"]
    names = [tool["name"] for tool in tools]
    if "echo" in names:
        return name, "echo", True
    for tool in tools:
        if not (tool.get("inputSchema") or {}).get("required"):
            return name, tool["name"], False
    return name, names[0], False


def check(case: Case, answer: Answer, report: FuzzReport) -> None:
    """
    Count C{answer} and record how it breaks the contract or C{case.expect}.
    """
    code = None if case.head else answer.code()
    report.by_status[answer.status] += 1
    label = f"{answer.status} {code}" if code else f"{answer.status} (HEAD)" if case.head else str(answer.status)
    report.by_code[label] += 1
    if case.session and answer.status < 500:
        report.sessions.add(case.session)
    why = contract_problems(answer, head=case.head, json_body=case.json_body)
    if case.head:
        if case.expect and answer.status not in {status for status, _ in case.expect}:
            why.append(f"unexpected: {answer.status}, expected {sorted(case.expect, key=str)}")
    elif case.expect and (answer.status, code if answer.status >= 300 else None) not in case.expect:
        why.append(f"unexpected: {(answer.status, code)}, expected {sorted(case.expect, key=str)}")
    if case.session and answer.status == 200:
        try:
            body = answer.json()
            if not isinstance(body.get("result"), str) or not isinstance(body.get("is_error"), bool):
                why.append("not a real result")
            elif case.echo is not None and body["result"] != case.echo:
                why.append(f"echo: {body['result']!r} != {case.echo!r}")
        except (ValueError, AttributeError):
            pass  # counted already
    if why:
        report.add_problem(case, answer, why)


def fuzz(
    url: str,
    auth: tuple[str, str] | str,
    count: int,
    seed: int,
    *,
    service: str | None = None,
    max_body_bytes: int = 4096,
    max_header_bytes: int = 16384,
    sessions: int = 4,
    tolerate_rate_limits: bool = False,
    timeout: float = 15.0,
) -> FuzzReport:
    """
    Send C{count} seeded random requests to the gateway at C{url}.

    @param auth: C{(user, password)} for Basic, or a bearer token.
    @param service: The service to call (default: the first by name).
    @param max_body_bytes: The gateway's C{server.max_body_bytes}.
    @param max_header_bytes: The gateway's C{server.max_header_bytes}.
    @param sessions: How many sessions valid calls share (each holds a child).
    @param tolerate_rate_limits: Accept 429 C{rate_limited} for any request.
    @return: The report; the same C{seed} sends the same requests.
    """
    header, user, password, token = _credentials(auth)
    report = FuzzReport(seed, pool=[f"fuzz-{seed}-{number}" for number in range(sessions)])
    with HTTPClient.for_url(url, timeout) as client:
        name, tool, echo = _discover(client, header, service)
        rng = random.Random(seed)
        generator = Generator(
            rng,
            service=name,
            tool=tool,
            echo=echo,
            auth=header,
            user=user,
            password=password,
            token=token,
            sessions=report.pool,
            max_body_bytes=max_body_bytes,
            max_header_bytes=max_header_bytes,
        )
        started = time.perf_counter()
        for _ in range(count):
            case = generator.case()
            if tolerate_rate_limits:
                case.expect = case.expect | {(429, "rate_limited")} if case.expect else case.expect
            report.requests += 1
            report.by_kind[case.kind] += 1
            try:
                answer = client.exchange(case.data, head=case.head)
            except ConnectionDropped as error:
                report.drops += 1
                report.add_problem(case, None, [f"dropped: {error}"])
                continue
            check(case, answer, report)
        report.seconds = time.perf_counter() - started
        report.connections = client.connections
    return report


def close_sessions(url: str, auth: tuple[str, str] | str, session_ids: Iterable[str]) -> dict[str, int]:
    """
    C{DELETE /sessions/<id>} for each; returns the statuses.
    """
    header = _credentials(auth)[0]
    statuses = {}
    with HTTPClient.for_url(url) as client:
        for session_id in sorted(session_ids):
            target = b"/sessions/" + quote(session_id, safe="").encode()
            statuses[session_id] = client.exchange(request_bytes(b"DELETE", target, [header])).status
    return statuses


def main(argv: list[str] | None = None) -> int:
    """
    C{python tests/fuzz_gateway.py URL USER PASSWORD [COUNT] [SEED]}.
    """
    parser = argparse.ArgumentParser(description="Fuzz a running mcpgateway's REST API.")
    parser.add_argument("url")
    parser.add_argument("user")
    parser.add_argument("password")
    parser.add_argument("count", nargs="?", type=int, default=10000)
    parser.add_argument("seed", nargs="?", type=int, default=1)
    parser.add_argument("--service", help="the service to call (default: the first)")
    parser.add_argument("--max-body-bytes", type=int, default=4096, help="the gateway's server.max_body_bytes")
    parser.add_argument("--max-header-bytes", type=int, default=16384, help="the gateway's server.max_header_bytes")
    parser.add_argument("--strict-rate-limits", action="store_true", help="count a 429 as a problem")
    args = parser.parse_args(argv)
    auth = (args.user, args.password)
    report = fuzz(
        args.url,
        auth,
        args.count,
        args.seed,
        service=args.service,
        max_body_bytes=args.max_body_bytes,
        max_header_bytes=args.max_header_bytes,
        tolerate_rate_limits=not args.strict_rate_limits,
    )
    print(report.summary())
    closed = close_sessions(args.url, auth, report.pool)
    print(f"closed sessions: {closed}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
