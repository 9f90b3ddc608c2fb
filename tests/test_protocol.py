"""
L{mcpgateway.mcp.stdio}: the JSON-RPC peer over a child's pipes, driven over
a L{StringTransport} with a L{Clock}; no process is started.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from mcpgateway.mcp.exits import ChildExited, ExitInfo, StderrTail
from mcpgateway.mcp.jsonrpc import RPCError
from mcpgateway.mcp.stdio import STDOUT_CLOSED_GRACE, ChildProtocol

LABEL = "unit[1]"
NAMESPACE = f"mcpgateway.child.{LABEL}"


# -- helpers -------------------------------------------------------------------------


class Peer:
    """
    A L{ChildProtocol} connected to a L{StringTransport}.
    """

    def __init__(self, max_line: int = 1 << 20, with_handler: bool = True) -> None:
        self.clock = Clock()
        self.notifications: list[tuple[str, dict[str, Any]]] = []
        handler = (lambda method, params: self.notifications.append((method, params))) if with_handler else None
        self.protocol = ChildProtocol(LABEL, self.clock, max_line, handler)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def sent(self) -> list[dict[str, Any]]:
        """
        @return: Every message written to the child so far; clears the transport.
        """
        raw = self.transport.value()
        self.transport.clear()
        assert raw == b"" or raw.endswith(b"\n")
        return [json.loads(line) for line in raw.splitlines()]

    def receive(self, *messages: Any) -> None:
        """
        Deliver C{messages} (JSON values, or raw bytes lines) on stdout in one chunk.
        """
        data = b"".join((m if isinstance(m, bytes) else json.dumps(m).encode()) + b"\n" for m in messages)
        self.protocol.outReceived(data)


def result_of(d: Deferred[Any]) -> Any:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def failure_of(d: Deferred[Any], *types: type[BaseException]) -> Failure:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    assert isinstance(box[0], Failure), f"expected a failure, got {box[0]!r}"
    assert box[0].check(*types), box[0]
    return box[0]


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """
    Events published to the global log publisher during the test.
    """
    events: list[dict[str, Any]] = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def ours(events: list[dict[str, Any]], level: LogLevel | None = None) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_namespace") == NAMESPACE and (level is None or e.get("log_level") == level)]


# -- requests and ids ------------------------------------------------------------------


def test_pid_is_none_on_a_string_transport() -> None:
    peer = Peer()
    assert peer.protocol.pid is None
    assert peer.protocol.alive


def test_request_ids_increase_from_one() -> None:
    peer = Peer()
    peer.protocol.request("a")
    peer.protocol.request("b", {"x": 1})
    peer.protocol.notify("notifications/initialized")
    peer.protocol.request("c")
    assert peer.sent() == [
        {"jsonrpc": "2.0", "id": 1, "method": "a"},
        {"jsonrpc": "2.0", "id": 2, "method": "b", "params": {"x": 1}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 3, "method": "c"},
    ]


def test_request_ids_are_never_reused() -> None:
    peer = Peer()
    first = peer.protocol.request("a")
    second = peer.protocol.request("b")
    peer.receive({"jsonrpc": "2.0", "id": 1, "result": {}})
    assert result_of(first) == {}
    second.cancel()
    failure_of(second, CancelledError)
    peer.sent()
    peer.protocol.request("c")
    peer.protocol.request("d")
    assert [m["id"] for m in peer.sent()] == [3, 4]


def test_responses_matched_by_id_out_of_order() -> None:
    peer = Peer()
    ds = [peer.protocol.request("m", {"n": n}) for n in range(3)]
    peer.receive(
        {"jsonrpc": "2.0", "id": 3, "result": {"n": 2}},
        {"jsonrpc": "2.0", "id": 1, "result": {"n": 0}},
    )
    assert result_of(ds[0]) == {"n": 0}
    assert not ds[1].called
    assert result_of(ds[2]) == {"n": 2}
    peer.receive({"jsonrpc": "2.0", "id": 2, "result": {"n": 1}})
    assert result_of(ds[1]) == {"n": 1}


def test_non_object_result_is_wrapped() -> None:
    peer = Peer()
    d = peer.protocol.request("m")
    peer.receive({"jsonrpc": "2.0", "id": 1, "result": [1, 2]})
    assert result_of(d) == {"value": [1, 2]}


def test_response_split_across_chunks() -> None:
    peer = Peer()
    d = peer.protocol.request("m")
    raw = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"ok": True}}).encode() + b"\r\n"
    for i in range(len(raw)):
        assert not d.called
        peer.protocol.outReceived(raw[i : i + 1])
    assert result_of(d) == {"ok": True}


# -- the child's own requests ------------------------------------------------------------


def test_server_ping_with_id_zero_is_answered() -> None:
    peer = Peer()
    peer.receive({"jsonrpc": "2.0", "id": 0, "method": "ping"})
    assert peer.sent() == [{"jsonrpc": "2.0", "id": 0, "result": {}}]


def test_server_request_for_another_method_gets_method_not_found(logged: list[dict[str, Any]]) -> None:
    peer = Peer()
    peer.receive({"jsonrpc": "2.0", "id": "abc", "method": "sampling/createMessage", "params": {}})
    [answer] = peer.sent()
    assert answer["id"] == "abc"
    assert answer["error"]["code"] == -32601
    assert "sampling/createMessage" in answer["error"]["message"]
    assert "result" not in answer
    assert any(e.get("method") == "sampling/createMessage" for e in ours(logged))


def test_server_request_with_our_pending_id_is_not_our_response() -> None:
    peer = Peer()
    mine = peer.protocol.request("tools/call")
    peer.sent()
    peer.receive({"jsonrpc": "2.0", "id": 1, "method": "roots/list"})
    assert not mine.called
    [answer] = peer.sent()
    assert answer["id"] == 1 and answer["error"]["code"] == -32601
    peer.receive({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert not mine.called
    assert peer.sent() == [{"jsonrpc": "2.0", "id": 1, "result": {}}]
    peer.receive({"jsonrpc": "2.0", "id": 1, "result": {"mine": True}})
    assert result_of(mine) == {"mine": True}


def test_server_request_with_id_zero_does_not_touch_pending() -> None:
    peer = Peer()
    mine = peer.protocol.request("x")
    peer.receive({"jsonrpc": "2.0", "id": 0, "method": "elicitation/create"})
    assert not mine.called
    assert peer.sent()[-1]["error"]["code"] == -32601


# -- errors --------------------------------------------------------------------------------


def test_error_response_is_an_rpc_error() -> None:
    peer = Peer()
    d = peer.protocol.request("tools/call")
    peer.receive({"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "bad params", "data": {"f": 1}}})
    error = failure_of(d, RPCError).value
    assert isinstance(error, RPCError)
    assert (error.code, error.message, error.data) == (-32602, "bad params", {"f": 1})
    assert "-32602" in str(error)


def test_error_without_data() -> None:
    peer = Peer()
    d = peer.protocol.request("m")
    peer.receive({"jsonrpc": "2.0", "id": 1, "error": {"code": 7, "message": "no"}})
    error = failure_of(d, RPCError).value
    assert isinstance(error, RPCError)
    assert error.data is None


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        ("oops", -32603, "'oops'"),
        ({"code": True, "message": "m"}, -32603, "m"),
        ({"code": "12", "message": 5}, -32603, "5"),
        ({}, -32603, ""),
    ],
)
def test_malformed_error_responses(error: Any, code: int, message: str) -> None:
    peer = Peer()
    d = peer.protocol.request("m")
    peer.receive({"jsonrpc": "2.0", "id": 1, "error": error})
    value = failure_of(d, RPCError).value
    assert isinstance(value, RPCError)
    assert (value.code, value.message) == (code, message)


def test_non_json_lines_and_arrays_are_skipped_and_logged(logged: list[dict[str, Any]]) -> None:
    peer = Peer()
    d = peer.protocol.request("m")
    peer.receive(b"Starting server...", b"[1, 2]", b'"text"', b"{broken", {"jsonrpc": "2.0", "id": 1, "result": {}})
    assert result_of(d) == {}
    warnings = ours(logged, LogLevel.warn)
    assert len(warnings) == 4
    assert warnings[0]["line"] == b"Starting server..."
    assert warnings[1]["line"] == b"[1, 2]"
    assert peer.protocol.alive


def test_response_to_unknown_id_is_dropped() -> None:
    peer = Peer()
    d = peer.protocol.request("m")
    peer.sent()
    peer.receive(
        {"jsonrpc": "2.0", "id": 99, "result": {}},
        {"jsonrpc": "2.0", "id": "1", "result": {}},
        {"jsonrpc": "2.0", "id": 1.0, "result": {}},
        {"jsonrpc": "2.0", "id": True, "result": {}},
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}},
    )
    assert not d.called
    assert peer.sent() == []
    peer.receive({"jsonrpc": "2.0", "id": 1, "result": {"late": "fine"}})
    assert result_of(d) == {"late": "fine"}


def test_duplicate_response_is_dropped() -> None:
    peer = Peer()
    d = peer.protocol.request("m")
    peer.receive({"jsonrpc": "2.0", "id": 1, "result": {"n": 1}}, {"jsonrpc": "2.0", "id": 1, "result": {"n": 2}})
    assert result_of(d) == {"n": 1}


# -- notifications ---------------------------------------------------------------------------


def test_notifications_are_passed_on() -> None:
    peer = Peer()
    peer.receive(
        {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"},
        {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "hi"}},
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": [1]},
    )
    assert peer.notifications == [
        ("notifications/tools/list_changed", {}),
        ("notifications/message", {"level": "info", "data": "hi"}),
        ("notifications/progress", {}),
    ]
    assert peer.sent() == []


def test_notifications_without_a_handler_are_ignored() -> None:
    peer = Peer(with_handler=False)
    d = peer.protocol.request("m")
    peer.receive({"jsonrpc": "2.0", "method": "notifications/message"}, {"jsonrpc": "2.0", "id": 1, "result": {}})
    assert result_of(d) == {}


# -- cancellation --------------------------------------------------------------------------------


def test_cancel_sends_notifications_cancelled_and_ignores_late_response() -> None:
    peer = Peer()
    first = peer.protocol.request("tools/call")
    second = peer.protocol.request("tools/call")
    peer.sent()
    second.cancel()
    failure_of(second, CancelledError)
    [note] = peer.sent()
    assert note["method"] == "notifications/cancelled"
    assert "id" not in note
    assert note["params"]["requestId"] == 2
    peer.receive({"jsonrpc": "2.0", "id": 2, "result": {"late": True}})
    assert not first.called
    peer.receive({"jsonrpc": "2.0", "id": 1, "result": {}})
    assert result_of(first) == {}


def test_cancel_after_the_response_sends_nothing() -> None:
    peer = Peer()
    d = peer.protocol.request("m")
    peer.receive({"jsonrpc": "2.0", "id": 1, "result": {"v": 1}})
    peer.sent()
    d.cancel()
    assert result_of(d) == {"v": 1}
    assert peer.sent() == []


# -- the end ---------------------------------------------------------------------------------------


def test_process_done_fails_pending_with_exit_info() -> None:
    peer = Peer()
    ds = [peer.protocol.request("m") for _ in range(3)]
    peer.protocol.errReceived(b"Traceback (most recent call last):\nValueError: boom\n")
    peer.protocol.processEnded(Failure(ProcessDone(0)))
    for d in ds:
        error = failure_of(d, ChildExited).value
        assert isinstance(error, ChildExited)
        assert error.info.exit_code == 0
        assert error.info.signal is None
        assert error.info.reason is None
        assert "ValueError: boom" in error.info.stderr_tail
        assert "exited with status 0" in str(error)
    assert peer.protocol.exit_info is not None
    assert peer.protocol.ended.done
    assert result_of(peer.protocol.ended.wait()) is peer.protocol.exit_info
    assert not peer.protocol.alive


def test_process_terminated_with_exit_code() -> None:
    peer = Peer()
    d = peer.protocol.request("m")
    peer.protocol.errReceived(b"fatal: no config\n")
    peer.protocol.processEnded(Failure(ProcessTerminated(exitCode=3)))
    info = failure_of(d, ChildExited).value.info  # type: ignore[attr-defined]
    assert (info.exit_code, info.signal) == (3, None)
    assert info.describe() == "exited with status 3"
    assert info.stderr_tail == "fatal: no config\n"


def test_process_killed_by_signal() -> None:
    peer = Peer()
    d = peer.protocol.request("m")
    peer.protocol.processEnded(Failure(ProcessTerminated(exitCode=None, signal=9)))
    info = failure_of(d, ChildExited).value.info  # type: ignore[attr-defined]
    assert (info.exit_code, info.signal) == (None, 9)
    assert info.describe() == "killed by signal 9"


def test_request_after_exit_fails_at_once_and_sends_nothing() -> None:
    peer = Peer()
    peer.protocol.processEnded(Failure(ProcessTerminated(exitCode=1)))
    peer.sent()
    d = peer.protocol.request("m")
    error = failure_of(d, ChildExited).value
    assert isinstance(error, ChildExited)
    assert error.info is peer.protocol.exit_info
    peer.protocol.notify("x")
    assert peer.sent() == []


def test_exit_info_describe() -> None:
    assert ExitInfo(None, None, "sent garbage", "").describe() == "sent garbage"
    assert ExitInfo(0, None, None, "").describe() == "exited with status 0"
    assert ExitInfo(None, 15, None, "").describe() == "killed by signal 15"


def test_line_over_the_limit_fails_pending_and_stops_the_peer(logged: list[dict[str, Any]]) -> None:
    peer = Peer(max_line=100)
    d = peer.protocol.request("m")
    peer.protocol.errReceived(b"about to flood\n")
    peer.protocol.outReceived(b"x" * 101)
    error = failure_of(d, ChildExited).value
    assert isinstance(error, ChildExited)
    assert error.info.reason is not None
    assert "100 bytes" in error.info.reason
    assert "limit" in error.info.reason
    assert error.info.exit_code is None
    assert "about to flood" in error.info.stderr_tail
    assert not peer.protocol.alive
    assert [e for e in ours(logged, LogLevel.error)]
    # Nothing more is read from it, and new requests fail at once with the reason.
    peer.protocol.outReceived(b'\n{"jsonrpc":"2.0","id":1,"result":{}}\n')
    later = peer.protocol.request("m")
    assert failure_of(later, ChildExited).value.info.reason == error.info.reason  # type: ignore[attr-defined]
    # Its eventual end keeps the violation as the reason.
    peer.protocol.processEnded(Failure(ProcessTerminated(exitCode=None, signal=9)))
    assert peer.protocol.exit_info is not None
    assert peer.protocol.exit_info.reason == error.info.reason
    assert peer.protocol.exit_info.signal == 9


def test_complete_line_over_the_limit() -> None:
    peer = Peer(max_line=50)
    d = peer.protocol.request("m")
    peer.receive({"jsonrpc": "2.0", "id": 1, "result": {"pad": "y" * 100}})
    assert "50 bytes" in str(failure_of(d, ChildExited).value)


def test_violate_only_once() -> None:
    peer = Peer()
    d = peer.protocol.request("m")
    peer.protocol.violate("first reason")
    peer.protocol.violate("second reason")
    assert failure_of(d, ChildExited).value.info.reason == "first reason"  # type: ignore[attr-defined]
    assert failure_of(peer.protocol.request("m"), ChildExited).value.info.reason == "first reason"  # type: ignore[attr-defined]


def test_deeply_nested_line_is_a_violation_not_a_crash(logged: list[dict[str, Any]]) -> None:
    peer = Peer(max_line=1 << 22)
    d = peer.protocol.request("m")
    peer.protocol.outReceived(b"[" * 200_000 + b"]" * 200_000 + b"\n")
    assert "nested too deeply" in str(failure_of(d, ChildExited).value)
    assert not peer.protocol.alive


def test_non_finite_numbers_from_a_child_are_read_as_null() -> None:
    peer = Peer()
    d = peer.protocol.request("m")
    peer.protocol.outReceived(b'{"jsonrpc":"2.0","id":1,"result":{"a":NaN,"b":-Infinity,"c":1e400,"d":1.5}}\n')
    assert result_of(d) == {"a": None, "b": None, "c": None, "d": 1.5}


@pytest.mark.parametrize("params", [{"x": float("nan")}, {"x": float("inf")}, {"x": object()}])
def test_unsendable_params_fail_the_request_and_send_nothing(params: dict[str, Any]) -> None:
    peer = Peer()
    failure_of(peer.protocol.request("m", params), ValueError)
    assert peer.sent() == []
    # The id was not spent and nothing is pending: the next request is id 1.
    peer.protocol.request("n")
    assert [m["id"] for m in peer.sent()] == [1]


def test_too_deep_params_fail_the_request() -> None:
    peer = Peer()
    value: Any = []
    for _ in range(100_000):
        value = [value]
    failure_of(peer.protocol.request("m", {"x": value}), ValueError)
    assert peer.sent() == []


def test_unsendable_answer_to_a_child_request_becomes_an_error() -> None:
    peer = Peer()
    answer: Deferred[dict[str, Any]] = Deferred()
    peer.protocol.request_handler = lambda method, params: answer
    peer.receive({"jsonrpc": "2.0", "id": 7, "method": "roots/list"})
    answer.callback({"bad": float("nan")})
    (sent,) = peer.sent()
    assert sent["id"] == 7
    assert sent["error"]["code"] == -32603


def test_closed_stdout_of_a_running_child_kills_it_after_a_grace() -> None:
    peer = Peer()
    d = peer.protocol.request("m")
    peer.protocol.outConnectionLost()
    assert not d.called, "an exiting child closes stdout first: wait for its end"
    peer.clock.advance(STDOUT_CLOSED_GRACE)
    assert "closed its stdout" in str(failure_of(d, ChildExited).value)
    assert not peer.protocol.alive


def test_closed_stdout_then_exit_is_reported_as_the_exit() -> None:
    peer = Peer()
    d = peer.protocol.request("m")
    peer.protocol.outConnectionLost()
    peer.protocol.processEnded(Failure(ProcessTerminated(exitCode=3)))
    assert failure_of(d, ChildExited).value.info.exit_code == 3  # type: ignore[attr-defined]
    assert peer.protocol.exit_info is not None and peer.protocol.exit_info.reason is None
    assert peer.clock.getDelayedCalls() == []


def test_abort_fails_pending_without_logging_an_error(logged: list[dict[str, Any]]) -> None:
    peer = Peer()
    d = peer.protocol.request("m")
    peer.protocol.abort("the gateway is stopping")
    assert failure_of(d, ChildExited).value.info.reason == "the gateway is stopping"  # type: ignore[attr-defined]
    assert not ours(logged, LogLevel.error)


# -- stderr --------------------------------------------------------------------------------------------


def tail(keep: int = 4096, rate: int = 20) -> tuple[StderrTail, Clock, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    clock = Clock()
    return (
        StderrTail(Logger(namespace="t", observer=events.append), clock, keep=keep, lines_per_second=rate),
        clock,
        events,
    )


def lines_logged(events: list[dict[str, Any]]) -> list[str]:
    return [e["line"] for e in events if "line" in e]


def test_stderr_keeps_only_the_last_4_kib() -> None:
    stderr, _, _ = tail()
    data = b"".join(f"{i:05d}\n".encode() for i in range(3000))  # 18000 bytes
    for start in range(0, len(data), 700):
        stderr.feed(data[start : start + 700])
    assert stderr.total_bytes == len(data)
    # From the first whole line: a cut line could hold a piece of a secret.
    assert stderr.text() == data[-4096:].decode().split("\n", 1)[1]


def test_stderr_short_output_kept_whole() -> None:
    stderr, _, _ = tail()
    stderr.feed(b"one\n")
    stderr.feed(b"two")
    assert stderr.text() == "one\ntwo"


def test_stderr_invalid_utf8_is_replaced() -> None:
    stderr, _, events = tail()
    stderr.feed(b"caf\xe9\n")
    assert stderr.text() == "caf\ufffd\n"
    assert lines_logged(events) == ["caf\ufffd"]


def test_stderr_lines_across_chunks_and_blank_lines() -> None:
    stderr, _, events = tail()
    stderr.feed(b"hel")
    stderr.feed(b"lo\r\n\n   \nworld\n")
    assert lines_logged(events) == ["hello", "world"]
    assert all(e["log_level"] == LogLevel.info for e in events)


def test_stderr_long_line_without_newline_is_truncated() -> None:
    stderr, _, events = tail()
    stderr.feed(b"z" * 5000)
    assert lines_logged(events) == ["z" * 2000]


def test_stderr_flood_of_one_megabyte() -> None:
    stderr, _, events = tail()
    chunk = (b"noise " * 10 + b"\n") * 1000  # 61 KiB of 61-byte lines
    for _ in range(17):
        stderr.feed(chunk)
    stderr.feed(b"y" * (1 << 20))  # and a megabyte without a newline
    assert stderr.total_bytes == 17 * len(chunk) + (1 << 20)
    assert len(stderr._tail) <= 2 * 4096
    assert stderr.text() == "y" * 4096
    assert len(lines_logged(events)) == 20  # all in one clock second


def test_stderr_rate_limit_per_clock_second() -> None:
    stderr, clock, events = tail()
    stderr.feed(b"".join(f"line {i}\n".encode() for i in range(50)))
    assert lines_logged(events) == [f"line {i}" for i in range(20)]
    clock.advance(0.5)
    stderr.feed(b"still dropped\n")
    assert len(lines_logged(events)) == 20
    clock.advance(0.5)
    events.clear()
    stderr.feed(b"next second\n")
    assert events[0]["log_level"] == LogLevel.warn
    assert events[0]["dropped"] == 31
    assert lines_logged(events) == ["next second"]


def test_stderr_rate_limit_resets_without_drops() -> None:
    stderr, clock, events = tail()
    for second in range(3):
        stderr.feed(b"".join(f"{second}-{i}\n".encode() for i in range(20)))
        clock.advance(1)
    assert len(lines_logged(events)) == 60
    assert not [e for e in events if "dropped" in e]


def test_child_stderr_goes_to_the_child_logger(logged: list[dict[str, Any]]) -> None:
    peer = Peer()
    peer.protocol.errReceived(b"".join(f"warning {i}\n".encode() for i in range(30)))
    assert [e["line"] for e in ours(logged, LogLevel.info) if "line" in e] == [f"warning {i}" for i in range(20)]
    peer.clock.advance(1)
    peer.protocol.errReceived(b"after\n")
    [dropped] = [e for e in ours(logged, LogLevel.warn) if "dropped" in e]
    assert dropped["dropped"] == 10
    assert peer.protocol.stderr.text().endswith("warning 29\nafter\n")
