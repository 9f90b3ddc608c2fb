"""
Bad input, property-tested, against a live gateway; the README's table of
bad input row by row; the connection-level answers (lingering close, slow
clients) and the former bugs, each pinned by a test.

Every answer to bad input must be a 4xx with a JSON body C{{"error": str,
"code": str}} and the security headers (or a 200 with a real result when the
input happens to be valid), never a 5xx, never a traceback, never a dropped
or reset connection (only 400 C{bad_http}, 408 and 413 close it, and only
after the client could read them), and invalid input never starts a child
or opens a session.  The status and code must be the ones README.rst gives:
the oracles in L{tests.fuzz_gateway} compute them from its rules,
independently of the gateway's code.

How hypothesis meets the reactor: pytest-twisted runs the reactor in the
main thread, and a hypothesis test is synchronous.  So each test starts a
gateway with the C{live} fixture (real socket, real children, the usual
leak and logged-failure checks), then runs its hypothesis property in a
worker thread (C{deferToThread}) with the blocking raw-socket client of
L{tests.fuzz_gateway}, while the reactor serves.  The checks of each example
read the gateway's state (spawn counters, sessions) from that thread:
plain reads of values the reactor writes.  Raw sockets, not an HTTP
library, because the inputs include what no library sends (NUL in paths,
duplicate headers, broken chunking).

The 10,000-request fuzz run is in L{tests.test_fuzz_http}.
C{MCPGATEWAY_FUZZ_EXAMPLES} scales the number of examples per property.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from zope.interface import directlyProvides

from mcpgateway.devcert import main as devcert
from mcpgateway.http.rest import MetricsPage
from mcpgateway.http.site import GatewayChannel, GatewaySite
from mcpgateway.http.tls import load_tls
from mcpgateway.observe.metrics import GatewayMetrics

from .conftest import PASSWORD, USER, fixture_service, wait_until
from .fuzz_gateway import (
    CLOSING,
    MAX_DEPTH,
    SECURITY_HEADERS,
    SERVICE_NAME,
    SESSION_ID,
    TOOL_NAME,
    Answer,
    HTTPClient,
    authorized,
    basic,
    call_expectation,
    contract_problems,
    header_expectation,
    header_size,
    request_bytes,
    route_expectation,
)

EXAMPLES = int(os.environ.get("MCPGATEWAY_FUZZ_EXAMPLES", "200"))

RATE_LIMITS = {
    "call_limit": "1000000 per minute",
    "default_limits": ["1000000 per minute"],
    "tools_limit": "1000000 per minute",
    "session_delete_limit": "1000000 per minute",
    "auth_failure_limit": "1000000 per minute",
}
POOL = ("hyp-1", "hyp-2")  # the only sessions valid calls of the properties use
AUTH_HEADER = (b"Authorization", basic(USER, PASSWORD))
JSON = (b"Content-Type", b"application/json")
CALL = b"/services/fx/call"
FIXTURE_TOOLS = {"echo", "counter"}  # the fixture's tools valid calls may use; any other name is unknown to it
OTHER_FIXTURE_TOOLS = {"add", "sleep", "crash", "big", "fail", "rpc_error", "image", "ask", "notify", "pid"}
OTHER_FIXTURE_TOOLS |= {"meta", "spawn_grandchild", "slow_progress"}


def properties(examples: int = EXAMPLES) -> Any:
    """
    Hypothesis settings for a property run against a live gateway.
    """
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,  # nothing written into the tree
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


def start(live: Any, service: dict[str, Any] | None = None, **server: Any) -> Any:
    """
    A gateway with one fixture service C{fx}, high rate limits (so 429 masks
    nothing) and no reaper run during a test.
    """
    return live(
        {"fx": service or fixture_service()},
        server=server,
        rate_limiting=RATE_LIMITS,
        session={"cleanup_interval": 3600},
    )


async def in_thread(probe: Probe, test: Callable[[], None]) -> None:
    """
    Run a blocking check (a hypothesis property) while the reactor serves;
    then close the probe's connection.
    """
    try:
        await deferToThread(test)
    finally:
        probe.client.close()


class Probe:
    """
    The blocking side of a test: a raw-socket client for one live gateway,
    and the checks every answer gets.
    """

    def __init__(self, gw: Any) -> None:
        self.gw = gw
        self.port = gw.port.getHost().port
        self.client = HTTPClient("127.0.0.1", self.port, timeout=30)
        self.service = gw.gateway.services["fx"]

    def send(self, data: bytes, *, head: bool = False, json_body: bool = True) -> Answer:
        """
        Send one request; its answer must keep the contract of every answer.
        """
        answer = self.client.exchange(data, head=head)
        problems = contract_problems(answer, head=head, json_body=json_body)
        assert not problems, f"{problems}\nrequest: {data[:400]!r}\nanswer: {answer}"
        return answer

    def sessions(self) -> set[str]:
        return {session.id for session in self.gw.gateway.sessions}

    def expect(self, data: bytes, status: int, code: str | None, *, head: bool = False) -> Answer:
        answer = self.send(data, head=head)
        got = (answer.status, None if head or answer.status < 300 else answer.code())
        wanted = (status, None if head else code)
        assert got == wanted, f"{got} != {wanted}\nrequest: {data[:400]!r}\nanswer: {answer}"
        if status == 401:
            challenges = answer.all(b"www-authenticate")
            assert any(c.startswith(b"Basic") for c in challenges), challenges
            assert any(c.startswith(b"Bearer") for c in challenges), challenges
        if status == 405:
            assert answer.header(b"allow"), "405 without Allow"
        if (status, code) in CLOSING:
            assert answer.closed, "this answer closes the connection"
        return answer

    def invalid(self, data: bytes, status: int, code: str, *, head: bool = False) -> Answer:
        """
        Invalid input: the expected error, and no child and no session for it.
        """
        spawns, sessions = self.service.spawns, self.sessions()
        answer = self.expect(data, status, code, head=head)
        assert self.service.spawns == spawns, f"invalid input started a child: {data[:300]!r}"
        assert self.sessions() <= sessions, f"invalid input opened a session: {data[:300]!r}"
        return answer

    def valid_call(self, data: bytes, body: dict[str, Any]) -> Answer:
        """
        A valid call: a real result (C{echo} gives its text back).
        """
        answer = self.expect(data, 200, None)
        result = answer.json()
        assert result["session_id"] == body["session_id"]
        assert result["tool"] == body["tool"]
        assert result["service"] == "fx"
        assert isinstance(result["result"], str)
        assert result["is_error"] is (body["tool"] not in FIXTURE_TOOLS)
        arguments = body.get("arguments") or {}
        if body["tool"] == "echo" and isinstance(arguments.get("text", ""), str):
            assert result["result"] == arguments.get("text", "")
        if body["session_id"] not in (*POOL, "victim"):
            self.expect(self.delete(body["session_id"]), 200, None)
        assert self.sessions() <= {*POOL, "victim"}, self.sessions()
        return answer

    def delete(self, session_id: str) -> bytes:
        return request_bytes(b"DELETE", b"/sessions/" + quote(session_id, safe="").encode(), [AUTH_HEADER])

    def call(self, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Answer:
        """
        C{POST /services/fx/call} with C{body}; the answer the README gives.
        """
        headers = [JSON] if headers is None else headers
        data = request_bytes(b"POST", CALL, [AUTH_HEADER, *headers], body)
        lines = [name + b": " + value for name, value in headers]
        if not header_expectation(lines) or header_size(data) > 16384:
            return self.invalid(data, 400, "bad_http")
        types = [value.strip(b" \t") for name, value in headers if name.lower() == b"content-type"]
        status, outcome = call_expectation(body, types)
        if status == 200:
            assume(outcome["tool"] not in OTHER_FIXTURE_TOOLS)  # crash, sleep...: not bad input
            return self.valid_call(data, outcome)
        return self.invalid(data, status, outcome)


# -- strategies -------------------------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=()), max_size=40)  # surrogates, NUL, controls included
KEYS = st.sampled_from(["tool", "session_id", "arguments", "metadata", "timeout", "text"]) | TEXT
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,  # NaN and infinities become NaN/Infinity
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20,
)
BAD_NAMES = st.one_of(
    st.sampled_from(["", " ", "../etc/passwd", "a b", "a/b", "s\x00", "é", "\ud800", "名前", "x" * 129, "echo\n"]),
    TEXT,
    st.text("abcXYZ019_.-", min_size=129, max_size=300),
).filter(lambda name: not TOOL_NAME.fullmatch(name))
NOT_A_SESSION_ID = JSON_VALUES.filter(lambda value: not (isinstance(value, str) and SESSION_ID.fullmatch(value)))
CALL_BODIES = st.tuples(
    st.dictionaries(TEXT, JSON_VALUES, max_size=2),  # unknown fields, ignored
    st.fixed_dictionaries(
        {},
        optional={
            "tool": st.one_of(st.sampled_from(["echo", "counter", "no_such_tool"]), BAD_NAMES, JSON_VALUES),
            "session_id": st.one_of(st.sampled_from([*POOL, "mcp-1", ".."]), BAD_NAMES, NOT_A_SESSION_ID),
            "arguments": st.one_of(st.fixed_dictionaries({"text": TEXT}), JSON_VALUES),
            "metadata": st.one_of(st.dictionaries(TEXT, JSON_VALUES, max_size=3), JSON_VALUES),
            "timeout": st.one_of(
                st.sampled_from([0, -1, 1e-9, 1, 86400, 86400.0001, True, False, "300", None]),
                st.floats(),
                st.integers(),
                JSON_VALUES,
            ),
        },
    ),
).map(lambda parts: {**parts[0], **parts[1]})


def dump(value: Any, escaped: bool) -> bytes:
    """
    JSON bytes as a client sends them: escaped, or raw UTF-8 where that is
    UTF-8 (lone surrogates stay escaped).
    """
    if not escaped:
        try:
            return json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            pass
    return json.dumps(value).encode()


def flip(body: bytes, changes: list[tuple[int, int]]) -> bytes:
    data = bytearray(body)
    for where, byte in changes:
        data[where % len(data)] = byte
    return bytes(data)


VALID_BODIES = [
    b'{"tool": "echo", "session_id": "hyp-1", "arguments": {"text": "hello"}}',
    b'{"tool":"counter","session_id":"hyp-2","timeout":30,"metadata":{"call":"x"}}',
]
MUTATED = st.builds(
    flip,
    st.sampled_from(VALID_BODIES),
    st.lists(st.tuples(st.integers(0, 10**4), st.integers(0, 255)), min_size=1, max_size=4),
)
HEADER_BYTES = st.binary(max_size=80).filter(lambda value: b"\r\n" not in value)
SEGMENTS = st.one_of(
    st.sampled_from(
        [
            b"..",
            b".",
            b"%2e%2e",
            b"%2E",
            b"...",
            b"~",
            b"%00",
            b"victim%00",
            b"a%00b",
            b"%0a",
            b"%20",
            b"x%2Fy",
            b"..%2F..%2Fvictim",
            b"victim%2F",
            b"%252e%252e",
            b"%25",
            b"%zz",
            b"%",
            b"x;y",
            b"x#y",
            b"x%23y",
            b"vict%69m",
            b"VICTIM",
            b"victim.",
            b"fx",
            b"f%78",
            b"FX",
            b"\x7f",
            "é".encode(),
        ]
    ),
    TEXT.map(lambda text: quote(text, safe="", errors="surrogatepass").encode()),
    st.text("abcXYZ019_-.~!$&'()*+,;=:@%/", min_size=1, max_size=30).map(str.encode),
    st.binary(min_size=1, max_size=30),
    st.integers(60, 16000).map(lambda n: b"a" * n),
)


# -- properties ---------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_any_json_value_as_a_call_body(live: Any) -> None:
    """
    Any JSON value at all (nested, huge integers, NaN and infinities, any
    unicode with surrogates, escaped or raw) as the body of a call.
    """
    probe = Probe(start(live))

    @properties()
    @given(value=JSON_VALUES, escaped=st.booleans())
    @example(value=[[[]]], escaped=True)
    @example(value={"tool": "echo", "session_id": "hyp-1", "arguments": {"text": "\ud800\x00"}}, escaped=True)
    @example(value=float("nan"), escaped=True)
    def check(value: Any, escaped: bool) -> None:
        body = dump(value, escaped)
        status, outcome = call_expectation(body)
        if status == 200:
            assume(outcome["session_id"] in POOL)
        probe.call(body)

    await in_thread(probe, check)


@pytest_twisted.ensureDeferred
async def test_call_bodies_field_by_field(live: Any) -> None:
    """
    Objects whose fields are each valid or not (wrong types, missing,
    invalid names, unicode, unknown extra fields): the first invalid field
    in the README's order names the code; a valid one is a real call.
    """
    probe = Probe(start(live))

    @properties(EXAMPLES * 2)
    @given(body=CALL_BODIES, escaped=st.booleans())
    @example(body={"tool": "echo", "session_id": "hyp-1", "arguments": {"text": "x"}}, escaped=False)
    @example(body={"tool": "echo", "session_id": "hyp-1", "timeout": 1e-9}, escaped=True)
    @example(body={"session_id": "hyp-1"}, escaped=True)
    def check(body: dict[str, Any], escaped: bool) -> None:
        probe.call(dump(body, escaped))

    await in_thread(probe, check)
    assert probe.sessions() <= set(POOL)
    assert len(probe.gw.children()) <= len(POOL)


@pytest_twisted.ensureDeferred
async def test_arbitrary_and_mutated_bytes_as_a_call_body(live: Any) -> None:
    """
    Random bytes, and valid bodies with bytes overwritten: 400 unless the
    result is still a valid call.
    """
    probe = Probe(start(live))

    @properties(EXAMPLES * 2)
    @given(body=st.one_of(st.binary(max_size=400), MUTATED))
    @example(body=b"")
    @example(body=b"\xff\xfe")
    @example(body=b"\xef\xbb\xbf" + VALID_BODIES[0])  # a byte order mark: invalid_json
    def check(body: bytes) -> None:
        probe.call(body)

    await in_thread(probe, check)


@pytest_twisted.ensureDeferred
async def test_huge_numbers(live: Any) -> None:
    """
    Integers up to 6000 digits, long fractions, huge exponents, in every
    field: over 4300 digits, or overflowing to infinity (C{1e400}), is
    invalid_json; a number is only a timeout in (0, 86400].
    """
    probe = Probe(start(live))

    @properties()
    @given(
        digits=st.integers(1, 6000),
        form=st.sampled_from(["int", "negative", "fraction", "exponent", "tiny"]),
        place=st.sampled_from(["timeout", "arguments", "metadata", "tool", "session_id"]),
    )
    @example(digits=4300, form="int", place="arguments")
    @example(digits=4301, form="int", place="arguments")
    @example(digits=400, form="exponent", place="metadata")
    @example(digits=308, form="exponent", place="timeout")
    def check(digits: int, form: str, place: str) -> None:
        number = {
            "int": "9" * digits,
            "negative": "-" + "9" * digits,
            "fraction": "0." + "0" * digits + "1",
            "exponent": f"1e{digits}",
            "tiny": f"1e-{digits}",
        }[form]
        value = '{"text": "n", "n": ' + number + "}" if place in ("arguments", "metadata") else number
        fields = {"tool": '"echo"', "session_id": '"hyp-1"', place: value}
        body = ("{" + ", ".join(f'"{name}": {text}' for name, text in fields.items()) + "}").encode()
        probe.call(body)

    await in_thread(probe, check)


@pytest_twisted.ensureDeferred
async def test_deep_nesting(live: Any) -> None:
    """
    Nesting up to 100,000 deep, as the body or inside any field: more than
    64 levels (the body's own object counting as one) is invalid_json,
    never a crash; up to 64 reaches the child and back.
    """
    probe = Probe(start(live))

    @properties()
    @given(
        depth=st.one_of(
            st.integers(1, MAX_DEPTH + 5), st.integers(MAX_DEPTH - 3, MAX_DEPTH + 1), st.integers(900, 100_000)
        ),
        brackets=st.sampled_from([("[", "]"), ('{"a": ', "}")]),
        place=st.sampled_from(["body", "arguments", "metadata", "tool"]),
    )
    @example(depth=MAX_DEPTH - 2, brackets=('{"a": ', "}"), place="arguments")  # 64 with the body's two
    @example(depth=MAX_DEPTH - 1, brackets=("[", "]"), place="metadata")
    def check(depth: int, brackets: tuple[str, str], place: str) -> None:
        nested = (brackets[0] * depth + "1" + brackets[1] * depth).encode()
        if place == "body":
            body = nested
        elif place == "tool":
            body = b'{"tool": %s, "session_id": "hyp-1"}' % nested
        else:
            body = b'{"tool": "echo", "session_id": "hyp-2", "%s": {"text": "deep", "d": %s}}' % (
                place.encode(),
                nested,
            )
        probe.call(body)

    await in_thread(probe, check)


@pytest_twisted.ensureDeferred
async def test_unicode_round_trips_and_never_names(live: Any) -> None:
    """
    Any text (surrogates, NUL, controls, astral, noncharacters), escaped or
    raw UTF-8, comes back from echo unchanged; as a name it is invalid
    unless it is one.
    """
    probe = Probe(start(live))

    @properties()
    @given(text=TEXT, escaped=st.booleans(), field=st.sampled_from(["arguments", "tool", "session_id"]))
    @example(text="\ud800\udc00\udfff\x00\ufeff\u202e\U0010ffff", escaped=True, field="arguments")
    def check(text: str, escaped: bool, field: str) -> None:
        body: dict[str, Any] = {"tool": "echo", "session_id": "hyp-1"}
        if field == "arguments":
            body["arguments"] = {"text": text}
        else:
            assume(not SESSION_ID.fullmatch(text))
            body[field] = text
        probe.call(dump(body, escaped))

    await in_thread(probe, check)


@pytest_twisted.ensureDeferred
async def test_content_types(live: Any) -> None:
    """
    Any C{Content-Type} (none, several, garbage bytes): JSON and C{+json}
    types are read, others are 415 before the body is looked at.
    """
    probe = Probe(start(live))
    values = st.one_of(
        st.sampled_from(
            [
                b"application/json",
                b"APPLICATION/JSON; charset=latin-1",
                b"application/problem+json",
                b"text/plain",
                b"text/json",
                b"application/jsonx",
                b"application/x-www-form-urlencoded",
                b"multipart/form-data; boundary=x",
                b"*/*",
                b";",
                b"",
                b"application/json, text/plain",
                b"\xe9/\xff",
            ]
        ),
        HEADER_BYTES,
    )

    @properties()
    @given(types=st.lists(values, max_size=3), valid=st.booleans(), text=TEXT)
    def check(types: list[bytes], valid: bool, text: str) -> None:
        body = {"tool": "echo" if valid else "../x", "session_id": POOL[0], "arguments": {"text": text}}
        probe.call(dump(body, True), [(b"Content-Type", value) for value in types])

    await in_thread(probe, check)


@pytest_twisted.ensureDeferred
async def test_authorization_headers(live: Any) -> None:
    """
    Missing, empty, malformed, wrong, oddly spelled and duplicate
    C{Authorization} headers on every guarded route: 401 with both
    challenges (nothing started), or the route's answer when the last one
    is right; NUL in a header is 400 bad_http.
    """
    probe = Probe(start(live))
    good = basic(USER, PASSWORD)
    b64 = base64.b64encode
    values = st.one_of(
        st.sampled_from(
            [
                good,
                b"basic " + good[6:],
                b"BASIC   " + good[6:] + b"  ",
                good + b"x",
                good + b" extra",
                b"Basic",
                b"Basic ",
                b"Bearer",
                b"Bearer " + PASSWORD.encode(),
                b"Basic !!!!",
                b"Digest username=x",
                b"",
                b"Basic " + b64(f"{USER}:wrong".encode()),
                b"Basic " + b64(f"{USER.upper()}:{PASSWORD}".encode()),
                b"Basic " + b64(f"{USER}:{PASSWORD}\x00".encode()),
                b"Basic " + b64(f"{USER}{PASSWORD}".encode()),
                b"Basic a\x00b",
                b"Basic " + b64(b"\xff:\xfe"),
                b"Basic " + b"A" * 10000,
            ]
        ),
        HEADER_BYTES,
        st.binary(max_size=60).map(lambda raw: b"Basic " + b64(raw)),
        st.tuples(TEXT, TEXT).map(
            lambda pair: b"Basic " + b64(f"{pair[0]}:{pair[1]}".encode("utf-8", "surrogatepass"))
        ),
    )
    routes = [
        (b"POST", CALL),
        (b"GET", b"/services/fx/tools"),
        (b"DELETE", b"/sessions/no-such-session"),
        (b"GET", b"/services"),
        (b"GET", b"/sessions"),
    ]
    response, _ = await probe.gw.request("GET", "/services/fx/tools")  # the tool list cached: no spawn later
    assert response.code == 200
    await wait_until(lambda: not probe.gw.children())

    @properties(EXAMPLES * 2)
    @given(headers=st.lists(values, max_size=3), route=st.sampled_from(routes), text=TEXT)
    @example(headers=[b"Basic xx", good], route=routes[0], text="")
    @example(headers=[good, b"Basic xx"], route=routes[0], text="")
    def check(headers: list[bytes], route: tuple[bytes, bytes], text: str) -> None:
        method, target = route
        sent = [(b"Authorization", value) for value in headers]
        body = None
        call = {"tool": "echo", "session_id": POOL[1], "arguments": {"text": text}}
        if method == b"POST":
            sent.append(JSON)
            body = dump(call, True)
        data = request_bytes(method, target, sent, body)
        if not header_expectation([name + b": " + value for name, value in sent]) or header_size(data) > 16384:
            probe.invalid(data, 400, "bad_http")
        elif not authorized([value.strip(b" \t") for value in headers], USER, PASSWORD):
            probe.invalid(data, 401, "unauthorized")
        elif method == b"POST":
            probe.valid_call(data, call)
        elif method == b"DELETE":
            probe.invalid(data, 404, "session_not_found")
        else:
            probe.expect(data, 200, None)

    await in_thread(probe, check)


@pytest_twisted.ensureDeferred
async def test_path_tricks_in_ids_and_names(live: Any) -> None:
    """
    C{..}, percent-encoded slashes and NUL, double encoding, very long
    segments, unicode (encoded or raw), any bytes, in the session id of
    C{DELETE /sessions/<id>} and the service name of C{/tools} and
    C{/call}: the README's answer for the decoded segment, and only the
    exact id of a session closes it (a session named C{victim} survives
    every other trick).
    """
    gw = start(live)
    probe = Probe(gw)
    victim = {"tool": "echo", "session_id": "victim", "arguments": {"text": "alive"}}
    response, _ = await gw.call("fx", "echo", "victim", {"text": "alive"})
    assert response.code == 200
    templates = [(b"DELETE", b"/sessions/%s"), (b"GET", b"/services/%s/tools"), (b"POST", b"/services/%s/call")]

    @properties(EXAMPLES * 2)
    @given(segment=SEGMENTS, template=st.sampled_from(templates), query=st.sampled_from([b"", b"?x=1", b"?%ff"]))
    @example(segment=b"vict%69m", template=templates[0], query=b"")
    @example(segment=b"..%2F..%2Fvictim", template=templates[0], query=b"")
    @example(segment=b"%2Fvictim", template=templates[0], query=b"")
    @example(segment=b"%ff", template=templates[1], query=b"")
    @example(segment=b"a" * 17000, template=templates[2], query=b"")
    def check(segment: bytes, template: tuple[bytes, bytes], query: bytes) -> None:
        method, pattern = template
        target = pattern % segment + query
        route = route_expectation(method, target)
        body = None
        call = {"tool": "echo", "session_id": POOL[0], "arguments": {"text": "t"}}
        headers = [AUTH_HEADER]
        if method == b"POST":
            headers.append(JSON)
            body = dump(call, True)
        data = request_bytes(method, target, headers, body)
        param = route.param or ""
        if route.name == "bad_http" or header_size(data) > 16384:
            probe.invalid(data, 400, "bad_http")
        elif route.name == "invalid_url":
            probe.invalid(data, 400, "invalid_url")
        elif route.name in ("not_found", "method_not_allowed"):
            probe.invalid(data, 404 if route.name == "not_found" else 405, route.name)
        elif route.name == "session":
            if not SESSION_ID.fullmatch(param):
                probe.invalid(data, 400, "invalid_session_id")
            elif param in probe.sessions():
                probe.expect(data, 200, None)
                if param == "victim":
                    probe.valid_call(_call(dump(victim, True)), victim)
            else:
                probe.invalid(data, 404, "session_not_found")
        elif not SERVICE_NAME.fullmatch(param):
            probe.invalid(data, 400, "invalid_service_name")
        elif param != "fx":
            probe.invalid(data, 404, "service_not_found")
        elif route.name == "tools":
            probe.expect(data, 200, None)
        else:
            probe.valid_call(data, call)
        assert "victim" in probe.sessions(), f"{target!r} closed another session"

    await in_thread(probe, check)


@pytest_twisted.ensureDeferred
async def test_unknown_paths_and_wrong_methods(live: Any) -> None:
    """
    Any method token on any path: 404 not_found where no route matches
    (before credentials), 405 with C{Allow} for a route's wrong method, 400
    bad_http for what is not a request line; real routes keep the contract.
    """
    probe = Probe(start(live))
    words = st.sampled_from(
        [b"services", b"sessions", b"health", b"tools", b"call", b"fx", b"metrics", b"..", b"%2F", b"api"]
    )
    methods = st.one_of(
        st.sampled_from([b"GET", b"POST", b"DELETE", b"PUT", b"PATCH", b"HEAD", b"OPTIONS", b"TRACE", b"get", b"FOO"]),
        st.from_regex(rb"[A-Za-z!#$%&'*+.^_`|~-]{1,12}", fullmatch=True),
        st.binary(min_size=1, max_size=8),
    )

    @properties(EXAMPLES * 2)
    @given(method=methods, parts=st.lists(st.one_of(words, SEGMENTS), max_size=4), slash=st.booleans())
    @example(method=b"DELETE", parts=[b"services", b"fx", b"tools"], slash=False)
    @example(method=b"GET", parts=[b"nope"], slash=False)
    @example(method=b"GET", parts=[b"", b"health"], slash=False)  # //health is /health to Klein
    @example(method=b"GET", parts=[b"services", b"", b"fx", b"tools"], slash=False)
    def check(method: bytes, parts: list[bytes], slash: bool) -> None:
        target = b"/" + b"/".join(parts) + (b"/" if slash and parts else b"")
        assume(b" " not in method and b"\r" not in method and b"\n" not in method)
        route = route_expectation(method, target)
        assume(route.name not in ("mcp", "session"))
        head = method.upper() == b"HEAD"
        data = request_bytes(method, target, [AUTH_HEADER])
        if route.name == "bad_http" or header_size(data) > 16384:
            probe.invalid(data, 400, "bad_http")
        elif route.name == "invalid_url":
            probe.invalid(data, 400, "invalid_url", head=head)
        elif route.name == "not_found":
            probe.invalid(data, 404, "not_found", head=head)
        elif route.name == "method_not_allowed":
            probe.invalid(data, 405, "method_not_allowed", head=head)
        else:
            spawns = probe.service.spawns
            answer = probe.send(data, head=head, json_body=route.name != "metrics")
            assert answer.status < 500
            assert probe.service.spawns <= spawns + (route.name == "tools")

    await in_thread(probe, check)


# -- the README's table, row by row ---------------------------------------------------------------------


def _call(body: bytes, *headers: tuple[bytes, bytes]) -> bytes:
    return request_bytes(b"POST", CALL, [AUTH_HEADER, *(headers or (JSON,))], body)


def _get(target: bytes, *headers: tuple[bytes, bytes]) -> bytes:
    return request_bytes(b"GET", target, [*(headers or (AUTH_HEADER,))])


def _delete(target: bytes) -> bytes:
    return request_bytes(b"DELETE", target, [AUTH_HEADER])


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


LIMIT = 262144  # max_body_bytes of the table's gateway
_HEAD = b"POST /services/fx/call HTTP/1.1\r\nHost: x\r\nAuthorization: " + basic(USER, PASSWORD) + b"\r\n"

#: (bad input, request, status, code): README's "Bad input" table, and more, row by row.
DOCUMENTED = [
    ("not JSON", _call(b"{not json"), 400, "invalid_json"),
    ("empty body", _call(b""), 400, "invalid_json"),
    ("not UTF-8 (invalid bytes)", _call(b'{"tool": "\xff"}'), 400, "invalid_json"),
    ("not UTF-8 (UTF-16)", _call('{"tool": "echo", "session_id": "s"}'.encode("utf-16")), 400, "invalid_json"),
    ("not UTF-8 (encoded surrogate)", _call(b'{"tool": "echo", "session_id": "\xed\xa0\x80"}'), 400, "invalid_json"),
    ("byte order mark", _call(b'\xef\xbb\xbf{"tool": "echo", "session_id": "s"}'), 400, "invalid_json"),
    ("NaN / Infinity", _call(b'{"tool": "echo", "session_id": "s", "timeout": NaN}'), 400, "invalid_json"),
    ("JSON but not an object", _call(b"[1, 2]"), 400, "invalid_request"),
    ("wrong content type", _call(b"{}", (b"Content-Type", b"text/plain")), 415, "unsupported_media_type"),
    (
        "form content type",
        _call(b"a=b", (b"Content-Type", b"application/x-www-form-urlencoded")),
        415,
        "unsupported_media_type",
    ),
    ("wrong type: tool", _call(b'{"tool": 1, "session_id": "s"}'), 400, "invalid_tool_name"),
    ("wrong type: session_id", _call(b'{"tool": "echo", "session_id": []}'), 400, "invalid_session_id"),
    (
        "wrong type: arguments",
        _call(b'{"tool": "echo", "session_id": "s", "arguments": [1]}'),
        400,
        "invalid_arguments",
    ),
    ("wrong type: metadata", _call(b'{"tool": "echo", "session_id": "s", "metadata": "x"}'), 400, "invalid_metadata"),
    ("wrong type: timeout", _call(b'{"tool": "echo", "session_id": "s", "timeout": "300"}'), 400, "invalid_timeout"),
    ("timeout true", _call(b'{"tool": "echo", "session_id": "s", "timeout": true}'), 400, "invalid_timeout"),
    ("missing tool", _call(b'{"session_id": "s"}'), 400, "invalid_tool_name"),
    ("missing session_id", _call(b'{"tool": "echo"}'), 400, "invalid_session_id"),
    ("invalid tool name", _call(b'{"tool": "../etc/passwd", "session_id": "s"}'), 400, "invalid_tool_name"),
    ("session_id over 128", _call(b'{"tool": "echo", "session_id": "%s"}' % (b"s" * 129)), 400, "invalid_session_id"),
    ("session_id mcp-...", _call(b'{"tool": "echo", "session_id": "mcp-1"}'), 400, "invalid_session_id"),
    ("invalid service name", _get(b"/services/b%20d/tools"), 400, "invalid_service_name"),
    ("unknown service", _get(b"/services/ghost/tools"), 404, "service_not_found"),
    ("path: /sessions/..", _delete(b"/sessions/.."), 400, "invalid_session_id"),
    ("path: %2F in an id", _delete(b"/sessions/..%2F..%2Fx"), 404, "not_found"),
    ("path: %2F at the start of an id", _delete(b"/sessions/%2Fx"), 404, "not_found"),
    ("path: empty segment", _get(b"/services//fx/tools"), 404, "not_found"),
    ("path: %FF in an id", _delete(b"/sessions/%ff"), 400, "invalid_url"),
    ("path: cut UTF-8", _get(b"/health%c3"), 400, "invalid_url"),
    ("Host not UTF-8", b"GET /health HTTP/1.1\r\nHost: \xff\r\n\r\n", 400, "invalid_url"),
    ("request target * (OPTIONS)", request_bytes(b"OPTIONS", b"*", [AUTH_HEADER]), 404, "not_found"),
    ("request target * (GET)", request_bytes(b"GET", b"*", [AUTH_HEADER]), 404, "not_found"),
    ("path: %2F inside an id", _delete(b"/sessions/a%2Fb"), 404, "not_found"),
    ("path: %00 in an id", _delete(b"/sessions/a%00b"), 400, "invalid_session_id"),
    ("path: %2e%2e as a service", _get(b"/services/%2e%2e/tools"), 400, "invalid_service_name"),
    ("path: 5000-byte id", _delete(b"/sessions/" + b"a" * 5000), 400, "invalid_session_id"),
    ("path: encoded UTF-8 id", _delete(b"/sessions/%C3%A9"), 400, "invalid_session_id"),
    ("path: raw UTF-8 in the request line", _delete("/sessions/é".encode()), 400, "bad_http"),
    (
        "huge integer timeout",
        _call(b'{"tool": "echo", "session_id": "s", "timeout": 1%s}' % (b"0" * 400)),
        400,
        "invalid_timeout",
    ),
    ("1e400 timeout", _call(b'{"tool": "echo", "session_id": "s", "timeout": 1e400}'), 400, "invalid_json"),
    (
        "-1e400 in arguments",
        _call(b'{"tool": "echo", "session_id": "s", "arguments": {"n": -1e400}}'),
        400,
        "invalid_json",
    ),
    (
        "integer over 4300 digits",
        _call(b'{"tool": "echo", "session_id": "s", "n": %s}' % (b"9" * 4301)),
        400,
        "invalid_json",
    ),
    ("nesting 100,000 deep", _call(b"[" * 100000 + b"]" * 100000), 400, "invalid_json"),
    (
        "nesting 65 deep",
        _call(b'{"tool": "echo", "session_id": "s", "d": %s}' % _nested(MAX_DEPTH)),
        400,
        "invalid_json",
    ),
    ("unicode: NUL in session_id", _call(b'{"tool": "echo", "session_id": "s\\u0000"}'), 400, "invalid_session_id"),
    ("unicode: lone surrogate tool", _call(b'{"tool": "\\ud800", "session_id": "s"}'), 400, "invalid_tool_name"),
    ("no credentials", _get(b"/services", (b"X-Nothing", b"1")), 401, "unauthorized"),
    ("wrong password", _get(b"/services", (b"Authorization", basic(USER, "wrong"))), 401, "unauthorized"),
    ("malformed Basic", _get(b"/services", (b"Authorization", b"Basic !!!")), 401, "unauthorized"),
    ("unknown scheme", _get(b"/services", (b"Authorization", b"Digest x")), 401, "unauthorized"),
    ("bad, then good header", _get(b"/services", (b"Authorization", b"Basic x"), AUTH_HEADER), 200, None),
    ("good, then bad header", _get(b"/services", AUTH_HEADER, (b"Authorization", b"Basic x")), 401, "unauthorized"),
    ("NUL in a header", _get(b"/services", (b"Authorization", b"Basic a\x00b")), 400, "bad_http"),
    ("not a request line", b"NONSENSE\r\n\r\n", 400, "bad_http"),
    ("HTTP/2.0 request line", b"GET /health HTTP/2.0\r\n\r\n", 400, "bad_http"),
    ("101 headers", _get(b"/health", *[(b"X-%d" % i, b"1") for i in range(101)]), 400, "bad_http"),
    (
        "headers over max_header_bytes",
        _get(b"/health", *[(b"X-%d" % i, b"a" * 9000) for i in range(2)]),
        400,
        "bad_http",
    ),
    (
        "header line over max_header_bytes",
        _get(b"/services", (b"Authorization", b"Basic " + b"A" * 20000)),
        400,
        "bad_http",
    ),
    ("request line over max_header_bytes", _get(b"/sessions/" + b"a" * 17000), 400, "bad_http"),
    ("header line without colon", b"GET /health HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n", 400, "bad_http"),
    ("bad Content-Length", _HEAD + b"Content-Length: -1\r\n\r\n", 400, "bad_http"),
    ("Content-Length and chunked", _HEAD + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "bad_http"),
    ("bad chunk size", _HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400, "bad_http"),
    ("wrong method", request_bytes(b"PUT", CALL, [AUTH_HEADER]), 405, "method_not_allowed"),
    ("unknown route", _get(b"/nope"), 404, "not_found"),
    ("declared oversized body", _HEAD + b"Content-Length: 100000000\r\n\r\n", 413, "body_too_large"),
    (
        "chunked oversized body",
        # Exactly one byte too many, so the gateway has read all of it when it closes.
        _HEAD
        + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n%x\r\n%s"
        % (LIMIT // 2, b"x" * (LIMIT // 2), LIMIT // 2 + 1, b"x" * (LIMIT // 2 + 1)),
        413,
        "body_too_large",
    ),
]


@pytest_twisted.ensureDeferred
async def test_every_documented_bad_input_answer(live: Any, fail_on_logged_failures: list[Any]) -> None:
    """
    Each row of the bad-input table (README "Bad input"), and the valid
    oddities next to it: unicode round trips, nesting up to the limit.
    """
    gw = start(live, max_body_bytes=LIMIT)
    probe = Probe(gw)

    def check() -> None:
        for label, data, status, code in DOCUMENTED:
            try:
                if status == 200:
                    probe.expect(data, 200, None)
                else:
                    probe.invalid(data, status, code)
            except AssertionError as error:
                raise AssertionError(f"{label}: {error}") from None
        # Valid oddities: escaped surrogates, NUL, bidi controls, astral, raw UTF-8.
        text = "\ud800 \x00 \u202e 😀"
        body = json.dumps({"tool": "echo", "session_id": "u", "arguments": {"text": text}}).encode()
        assert probe.expect(_call(body), 200, None).json()["result"] == text
        body = b'{"tool": "echo", "session_id": "u", "arguments": {"text": "' + "é".encode() + b'"}}'
        assert probe.expect(_call(body), 200, None).json()["result"] == "é"
        # 64 levels, the body's object and arguments included, reach the child and come back.
        body = b'{"tool": "echo", "session_id": "u", "arguments": {"text": "deep", "d": %s}}' % _nested(MAX_DEPTH - 2)
        assert probe.expect(_call(body), 200, None).json()["result"] == "deep"
        probe.expect(probe.delete("u"), 200, None)

    await in_thread(probe, check)
    # Nothing was logged (Klein logs a traceback for a URL it cannot decode).
    assert not fail_on_logged_failures


@pytest_twisted.ensureDeferred
async def test_nesting_around_the_limit_and_the_old_parser_limit(live: Any) -> None:
    """
    Nesting in C{arguments} at every depth around the limit of 64, and
    around the C parser's own limit (about 950, where deep values used to
    pass the parse and overflow the stack when written to the child: 500):
    up to 64 reaches the child and back, deeper is invalid_json, never a 5xx.
    """
    probe = Probe(start(live))

    def scan() -> None:
        for depth in [*range(MAX_DEPTH - 4, MAX_DEPTH + 4), *range(890, 1010, 3)]:
            # The body's object and arguments are two of the levels.
            body = b'{"tool": "echo", "session_id": "hyp-1", "arguments": {"text": "d", "d": %s}}' % _nested(depth - 2)
            if depth <= MAX_DEPTH:
                assert probe.expect(_call(body), 200, None).json()["result"] == "d", depth
            else:
                probe.invalid(_call(body), 400, "invalid_json")

    await in_thread(probe, scan)


# -- answers before the request is whole: the lingering close --------------------------------------------------

#: Requests the gateway answers before their end, each followed by what a
#: simple client keeps sending: (head, what follows it, the answer).
_FIVE_MB = 5 * 1024 * 1024
EARLY_ANSWERS = [
    pytest.param(
        _HEAD + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % _FIVE_MB,
        b"x" * _FIVE_MB,
        (413, "body_too_large"),
        id="413-declared",
    ),
    pytest.param(
        _HEAD + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % _FIVE_MB,
        b"x" * _FIVE_MB + b"\r\n0\r\n\r\n",
        (413, "body_too_large"),
        id="413-chunked",
    ),
    pytest.param(
        _HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"x" * _FIVE_MB,
        (400, "bad_http"),
        id="400-bad-chunk",
    ),
    pytest.param(
        _HEAD + b"X-Long: ",
        b"a" * _FIVE_MB,  # one header line, much longer than max_header_bytes
        (400, "bad_http"),
        id="400-long-line",
    ),
]


def _read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """
    Read one answer delimited by its C{Content-Length}.

    @return: Its head (status line and headers) and body.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed within the body"
        body += chunk
    return head, body


def _send_all_then_read(sock: socket.socket, head: bytes, body: bytes) -> tuple[bytes, bytes]:
    """
    What http.client, urllib and requests do: send the whole request, in
    pieces, and only then read the answer.  Without a lingering close the
    gateway's early answer and close make the kernel reset the connection
    while the body is still coming: the send fails (EPIPE or ECONNRESET).
    """
    sock.sendall(head)
    view = memoryview(body)
    for start in range(0, len(body), 65536):
        sock.sendall(view[start : start + 65536])
    return _read_answer(sock)


def _check_early_answer(head: bytes, body: bytes, expected: tuple[int, str], *, secure: bool) -> None:
    status, code = expected
    assert head.startswith(b"HTTP/1.1 %d " % status), head
    headers = {name.lower(): value for name, _, value in (line.partition(b": ") for line in head.split(b"\r\n")[1:])}
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"connection"] == b"close"
    for name, value in SECURITY_HEADERS:
        assert headers[name] == value, name
    assert (b"strict-transport-security" in headers) is secure
    answer = json.loads(body)
    assert answer["code"] == code and isinstance(answer["error"], str)


def _closed_channels(monkeypatch: pytest.MonkeyPatch) -> list[GatewayChannel]:
    """
    @return: A list that every L{GatewayChannel} joins when its connection is lost.
    """
    lost: list[GatewayChannel] = []
    original = GatewayChannel.connectionLost

    def connection_lost(self: GatewayChannel, reason: Any = None) -> None:
        lost.append(self)
        original(self, reason)

    monkeypatch.setattr(GatewayChannel, "connectionLost", connection_lost)
    return lost


@pytest.mark.parametrize(("head", "body", "expected"), EARLY_ANSWERS)
@pytest_twisted.ensureDeferred
async def test_early_answer_reaches_a_client_still_sending(
    live: Any, monkeypatch: pytest.MonkeyPatch, head: bytes, body: bytes, expected: tuple[int, str]
) -> None:
    """
    The regression test of the resets of the CI fuzz run: 5 MB sent after
    an answer given at the start (413, 400), then the answer is read whole,
    and then the end of the stream: the gateway half-closed its side and
    read and dropped the body until the client closed.  (The linger is made
    long so the test does not race it.)
    """
    monkeypatch.setattr(GatewayChannel, "linger_seconds", 60.0)
    lost = _closed_channels(monkeypatch)
    gw = start(live, max_body_bytes=4096)
    port = gw.port.getHost().port

    def client() -> tuple[bytes, bytes, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            answer_head, answer_body = _send_all_then_read(sock, head, body)
            return answer_head, answer_body, sock.recv(65536)

    answer_head, answer_body, after = await deferToThread(client)
    _check_early_answer(answer_head, answer_body, expected, secure=False)
    assert after == b"", "the gateway half-closes after the answer"
    await wait_until(lambda: len(lost) == 1)  # and closes when the client does
    assert gw.gateway.services["fx"].spawns == 0


@pytest.fixture
def pem(tmp_path: Path) -> str:
    path = tmp_path / "server.pem"
    devcert([str(path), "--host", "localhost", "--host", "127.0.0.1"])
    return str(path)


class _Leaf(Resource):
    """
    Answers everything with C{{}}: for sites whose routes do not matter.
    """

    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b"{}"


@pytest.mark.parametrize(("head", "body", "expected"), EARLY_ANSWERS[::3])
@pytest_twisted.ensureDeferred
async def test_early_answer_reaches_a_client_still_sending_over_tls(
    pem: str, monkeypatch: pytest.MonkeyPatch, head: bytes, body: bytes, expected: tuple[int, str]
) -> None:
    """
    The same over TLS, where the half-close is the TLS close alert: then the
    gateway still reads and drops the body until the client closes.  (The
    TLS layer happens to linger unbounded by itself; this checks the TLS
    side of the gateway's own lingering.)
    """
    monkeypatch.setattr(GatewayChannel, "linger_seconds", 60.0)
    lost = _closed_channels(monkeypatch)
    port = await SSL4ServerEndpoint(reactor, 0, load_tls(pem), interface="127.0.0.1").listen(GatewaySite(_Leaf(), 4096))
    context = ssl.create_default_context(cafile=pem)

    def client() -> tuple[bytes, bytes, bytes]:
        with (
            socket.create_connection(("127.0.0.1", port.getHost().port), timeout=30) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as sock,
        ):
            answer_head, answer_body = _send_all_then_read(sock, head, body)
            return answer_head, answer_body, sock.recv(65536)

    try:
        answer_head, answer_body, after = await deferToThread(client)
        _check_early_answer(answer_head, answer_body, expected, secure=True)
        assert after == b"", "the close alert after the answer"
        await wait_until(lambda: len(lost) == 1)
    finally:
        await port.stopListening()


# -- the channel's states, on a clock ---------------------------------------------------------------------------


class _Transport(StringTransport):
    """
    A TCP-like transport that records a half-close and an abort.
    """

    half_closed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.half_closed = True

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


def _channel(transport: _Transport | None = None, **limits: Any) -> tuple[GatewayChannel, _Transport, Clock]:
    """
    A connected L{GatewayChannel} of a site with a 1000-byte body limit,
    C{request_timeout} 5 s and C{idle_timeout} 100 s, on a clock.
    """
    clock = Clock()
    limits = {"request_timeout": 5.0, "idle_timeout": 100.0, **limits}
    site = GatewaySite(_Leaf(), 1000, reactor=clock, **limits)
    channel = site.buildProtocol(None)
    assert isinstance(channel, GatewayChannel)
    transport = transport or _Transport()
    channel.makeConnection(transport)
    return channel, transport, clock


GET = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"


def test_early_answer_half_closes_discards_and_lingers_a_bounded_time() -> None:
    channel, transport, clock = _channel()
    channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"x" * 100)
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"code": "body_too_large"' in answer
    assert transport.half_closed and not transport.aborted and not transport.disconnecting
    # The rest of the body, then a whole request: read, dropped, never answered.
    channel.dataReceived(b"x" * 4900)
    channel.dataReceived(GET)
    assert transport.value() == answer
    clock.advance(channel.linger_seconds - 0.01)
    assert not transport.aborted
    clock.advance(0.02)
    assert transport.aborted
    assert transport.value() == answer


def test_linger_ends_when_the_client_closes() -> None:
    channel, transport, clock = _channel()
    channel.dataReceived(b"NONSENSE\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400 ") and b'"code": "bad_http"' in transport.value()
    assert clock.getDelayedCalls()
    channel.connectionLost(Failure(ConnectionDone()))
    assert not clock.getDelayedCalls(), "no timer left behind"


def test_linger_discards_a_bounded_amount() -> None:
    channel, transport, _ = _channel()
    channel.linger_bytes = 10_000
    channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n")
    channel.dataReceived(b"x" * 10_000)
    assert not transport.aborted
    channel.dataReceived(b"x")
    assert transport.aborted


def test_tls_is_half_closed_with_its_close_alert() -> None:
    """
    Under TLS, C{loseConnection} sends the close alert (C{TLSMemoryBIOProtocol}
    then keeps reading until the client's); the TCP half-close, which the TLS
    transport passes through to the TCP connection, would cut the TLS stream.
    """
    transport = _Transport()
    directlyProvides(transport, ISSLTransport)
    channel, transport, clock = _channel(transport)
    channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n")
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Strict-Transport-Security: max-age=" in answer
    assert transport.disconnecting and not transport.half_closed
    channel.dataReceived(b"x" * 1000)
    assert transport.value() == answer
    clock.advance(channel.linger_seconds)
    assert transport.aborted


def test_a_line_longer_than_max_header_bytes_is_answered_at_once() -> None:
    channel, transport, _ = _channel(max_header_bytes=100)
    channel.dataReceived(b"GET /" + b"a" * 200)  # no end of line yet
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 400 ") and b'"code": "bad_http"' in answer
    assert b"longer than 100 bytes" in answer
    channel.dataReceived(b"a" * 200 + b"\r\n\r\n" + GET)
    assert transport.value() == answer, "one answer only"


def test_the_request_deadline_starts_at_the_first_byte() -> None:
    channel, transport, clock = _channel()
    clock.advance(50)  # connected, silent: only the idle timeout applies
    assert transport.value() == b"" and not transport.disconnecting
    channel.dataReceived(b"G")  # a request line dribbled without its end
    clock.advance(4.9)
    channel.dataReceived(b"ET /x HTTP")
    assert transport.value() == b""
    clock.advance(0.2)
    assert transport.value().startswith(b"HTTP/1.1 408 ") and b'"code": "request_timeout"' in transport.value()


def test_an_idle_keep_alive_connection_is_not_a_slow_request() -> None:
    channel, transport, clock = _channel()
    channel.dataReceived(GET)
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    transport.clear()
    clock.advance(50)  # ten request timeouts, half the idle timeout
    assert transport.value() == b"" and not transport.disconnecting
    channel.dataReceived(GET)
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    transport.clear()
    clock.advance(100)  # the idle timeout
    assert transport.disconnecting and transport.value() == b""


def test_a_request_pipelined_behind_an_answered_one_has_a_deadline() -> None:
    channel, transport, clock = _channel()
    channel.dataReceived(GET + b"GET /x HTTP/1.1\r\n")  # the second one never ends
    assert transport.value().count(b"HTTP/1.1 200 ") == 1
    clock.advance(5.1)
    assert b"HTTP/1.1 408 " in transport.value()


# -- slow clients, over real sockets ----------------------------------------------------------------------------

SLOW = [
    pytest.param(b"GET /health HTTP/1.1", b"1", id="request-line"),
    pytest.param(b"GET /health HTTP/1.1\r\nHost: x\r\n", b"X-Drip: 1\r\n", id="headers"),
    pytest.param(_HEAD + b"Content-Length: 1000\r\n\r\n{", b" ", id="body"),
]


@pytest.mark.parametrize(("first", "drip"), SLOW)
@pytest_twisted.ensureDeferred
async def test_slow_clients_get_408(live: Any, first: bytes, drip: bytes) -> None:
    """
    A client dribbling its request (slowloris) is answered 408 once
    C{request_timeout} has passed since its first byte, however often it
    sends (every byte would reset an idle timeout).
    """
    gw = start(live, request_timeout=0.5)

    def dribble() -> tuple[float, bytes]:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", gw.port.getHost().port), timeout=0.1) as sock:
            sock.sendall(first)
            received = b""
            while time.monotonic() - started < 15:
                try:
                    chunk = sock.recv(4096)
                except TimeoutError:
                    sock.sendall(drip)  # the gateway keeps reading (and dropping) after its answer too
                    continue
                if not chunk:
                    break
                received += chunk
            return time.monotonic() - started, received

    took, received = await deferToThread(dribble)
    assert took >= 0.45  # not before request_timeout (0.05: clocks)
    head, _, body = received.partition(b"\r\n\r\n")
    _check_early_answer(head, body, (408, "request_timeout"), secure=False)


@pytest_twisted.ensureDeferred
async def test_an_idle_keep_alive_connection_stays_usable(live: Any) -> None:
    """
    The request deadline does not run between requests: a kept-alive
    connection idle for longer than C{request_timeout} serves the next
    request (the idle timeout bounds it).
    """
    gw = start(live, request_timeout=0.3, idle_timeout=60)
    probe = Probe(gw)

    def check() -> None:
        assert probe.expect(_get(b"/health"), 200, None).json()["status"] == "healthy"
        time.sleep(1.0)  # the client's thread, not the reactor
        # Had the deadline run, a 408 would be waiting here instead.
        assert probe.expect(_get(b"/health"), 200, None).json()["status"] == "healthy"
        assert probe.client.connections == 1

    await in_thread(probe, check)


# -- /metrics ---------------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_metrics_answers_carry_the_security_headers(live: Any) -> None:
    """
    C{GET /metrics} (Prometheus text, not JSON) carries the security headers
    like every other answer, on the API and on C{metrics_listen}'s page.
    """
    gw = start(live)
    page = reactor.listenTCP(0, GatewaySite(MetricsPage(GatewayMetrics(gw.gateway)), 1024), interface="127.0.0.1")

    def check(port: int, headers: list[tuple[bytes, bytes]]) -> None:
        with HTTPClient("127.0.0.1", port) as client:
            for method in (b"GET", b"HEAD"):
                answer = client.exchange(request_bytes(method, b"/metrics", headers), head=method == b"HEAD")
                assert answer.status == 200
                assert (answer.header(b"content-type") or b"").startswith(b"text/plain")
                assert not contract_problems(answer, head=method == b"HEAD", json_body=False)
                for name, value in SECURITY_HEADERS:
                    assert answer.header(name) == value, name
            assert b"mcpgateway_" in client.exchange(request_bytes(b"GET", b"/metrics", headers)).body

    try:
        await deferToThread(check, gw.port.getHost().port, [AUTH_HEADER])
        await deferToThread(check, page.getHost().port, [])
    finally:
        await page.stopListening()
