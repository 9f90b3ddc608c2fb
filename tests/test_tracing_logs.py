"""
OpenTelemetry (optional): a span per tool call, its W3C traceparent in the
child's C{params._meta}; the JSON log observer for twistd's C{--logger}; the
access log line of every call.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred
from twisted.logger import globalLogPublisher

from .conftest import fixture_service, wait_until

trace = pytest.importorskip("opentelemetry.trace")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
export = pytest.importorskip("opentelemetry.sdk.trace.export")


@pytest.fixture(scope="module")
def spans() -> Any:
    exporter = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest_twisted.ensureDeferred
async def test_tool_call_span_and_traceparent_reach_the_child(live: Any, spans: Any) -> None:
    gw = live({"fx": fixture_service()})
    spans.clear()
    response, body = await gw.call("fx", "meta", "traced")
    assert response.code == 200, body
    meta = json.loads(body["result"])
    finished = [span for span in spans.get_finished_spans() if span.name == "tools/call fx.meta"]
    assert len(finished) == 1
    span = finished[0]
    trace_id = format(span.context.trace_id, "032x")
    span_id = format(span.context.span_id, "016x")
    assert meta["traceparent"].startswith(f"00-{trace_id}-{span_id}-")
    assert span.attributes["mcpgateway.outcome"] == "ok"
    assert span.attributes["mcp.session.id"] == "traced"

    response, body = await gw.call("fx", "rpc_error", "traced")
    failed = [span for span in spans.get_finished_spans() if span.name == "tools/call fx.rpc_error"]
    assert failed[0].attributes["mcpgateway.outcome"] == "mcp_error"
    assert failed[0].status.status_code == trace.StatusCode.ERROR


@pytest_twisted.ensureDeferred
async def test_access_log_line_per_call(live: Any) -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        gw = live({"fx": fixture_service()})
        await gw.call("fx", "echo", "logged", {"text": "x"})
        await gw.call("fx", "crash", "logged")
    finally:
        globalLogPublisher.removeObserver(events.append)
    calls = [event for event in events if event.get("log_namespace") == "mcpgateway.access"]
    assert [(event["tool"], event["status"], event["outcome"]) for event in calls] == [
        ("echo", 200, "ok"),
        ("crash", 502, "child_failed"),
    ]
    assert all(event["principal"] == "tester" and event["session"] == "logged" for event in calls)
    assert all(event["ms"] > 0 for event in calls)


def test_json_logger_writes_one_object_per_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.logger import Logger

    from mcpgateway.observe.logs import json_logger

    stream = io.StringIO()
    monkeypatch.setattr("sys.stdout", stream)
    observer = json_logger()
    Logger(namespace="mcpgateway.test", observer=observer).info("hello {who}", who="world")
    lines = [line for line in stream.getvalue().split("\x1e") if line.strip()]
    record = json.loads(lines[0])
    assert record["who"] == "world"
    assert record["log_namespace"] == "mcpgateway.test"


def test_access_log_file_is_buffered_and_flushed_by_the_clock(tmp_path: Any) -> None:
    from twisted.internet.task import Clock

    from mcpgateway.observe.access import AccessLog

    clock = Clock()
    path = tmp_path / "access.jsonl"
    access = AccessLog(str(path), clock)
    access.start()
    access.call(principal="p", service="s", tool="t", session="x", status=200, outcome="ok", seconds=0.00123)
    assert path.read_text() == "", "buffered, not written per call"
    clock.advance(1)
    record = json.loads(path.read_text())
    assert record["principal"] == "p"
    assert record["ms"] == 1.23
    assert (record["status"], record["outcome"]) == (200, "ok")
    access.call(principal="p", service="s", tool="t", session="x", status=502, outcome="child_failed", seconds=0.5)
    access.stop()
    assert len(path.read_text().splitlines()) == 2, "stop() flushes"
    assert not clock.getDelayedCalls()
    off = AccessLog("off")
    off.call(principal="p", service="s", tool="t", session="x", status=200, outcome="ok", seconds=0.1)
    off.stop()


@pytest_twisted.ensureDeferred
async def test_mcp_tool_calls_are_traced_and_logged_like_rest_calls(live: Any, spans: Any) -> None:
    from .test_mcp_front import decoded, http, modern_headers, modern_request

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        gw = live({"fx": fixture_service()})
        spans.clear()
        answers = {}
        for tool in ("meta", "echo", "rpc_error", "crash"):
            call = modern_request("tools/call", {"name": f"fx.{tool}", "arguments": {"text": "x"}})
            _, raw = await http(gw, "POST", "/mcp", call, modern_headers("tools/call", f"fx.{tool}"))
            answers[tool] = decoded(raw)
    finally:
        globalLogPublisher.removeObserver(events.append)
    calls = [event for event in events if event.get("log_namespace") == "mcpgateway.access"]
    assert [(event["tool"], event["status"], event["outcome"]) for event in calls] == [
        ("meta", 200, "ok"),
        ("echo", 200, "ok"),
        ("rpc_error", 422, "mcp_error"),
        ("crash", 502, "child_failed"),
    ]
    assert all(event["principal"] == "tester" and event["session"] == "mcp-modern.tester" for event in calls)
    assert all(event["service"] == "fx" and event["ms"] > 0 for event in calls)
    # The errors still reach the client as JSON-RPC errors.
    assert answers["rpc_error"]["error"]["code"] == -32042
    assert answers["crash"]["error"]["data"]["reason"] == "child_failed"
    # One span per call; the child got its traceparent (and none of the client's envelope).
    meta = json.loads(answers["meta"]["result"]["content"][0]["text"])
    (span,) = [span for span in spans.get_finished_spans() if span.name == "tools/call fx.meta"]
    assert meta["traceparent"].startswith(f"00-{format(span.context.trace_id, '032x')}-")
    assert not any(key.startswith("io.modelcontextprotocol/") for key in meta)
    assert span.attributes["mcp.session.id"] == "mcp-modern.tester"
    (failed,) = [span for span in spans.get_finished_spans() if span.name == "tools/call fx.rpc_error"]
    assert failed.attributes["mcpgateway.outcome"] == "mcp_error"
    assert failed.status.status_code == trace.StatusCode.ERROR


@pytest_twisted.ensureDeferred
async def test_a_client_hanging_up_mid_call_is_logged_client_gone_and_cancels_the_call(live: Any) -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        gw = live({"fx": fixture_service()})
        await gw.call("fx", "echo", "gone", {"text": "warm"})  # the child is up
        call = ensureDeferred(gw.call("fx", "sleep", "gone", {"seconds": 30}))
        session = gw.gateway.sessions.get("gone")
        await wait_until(lambda: bool(session.calls))
        call.cancel()  # the client closes its connection
        call.addErrback(lambda failure: None)
        await wait_until(lambda: not session.calls)
        response, body = await gw.call("fx", "echo", "gone", {"text": "after"})
        assert (response.code, body["result"]) == (200, "after"), "the session's child is still usable"
    finally:
        globalLogPublisher.removeObserver(events.append)
    calls = [event for event in events if event.get("log_namespace") == "mcpgateway.access"]
    assert [(event["tool"], event["status"], event["outcome"]) for event in calls] == [
        ("echo", 200, "ok"),
        ("sleep", 499, "client_gone"),
        ("echo", 200, "ok"),
    ]
    await gw.request("DELETE", "/sessions/gone")
