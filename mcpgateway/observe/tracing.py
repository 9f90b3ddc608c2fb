"""
Optional OpenTelemetry: a span per tool call, and the W3C C{traceparent}
handed to the child in C{params._meta}.

There is no hard dependency: without C{opentelemetry-api} installed every
function here is a cheap no-op.  With the API but no SDK configured, spans
are non-recording and nothing is propagated.  Configure an SDK (exporter,
sampler) the usual way, e.g. with C{opentelemetry-instrument} or in code
before the reactor runs.
"""

from __future__ import annotations

import functools
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Span, Status, StatusCode
except ImportError:  # pragma: no cover - exercised where OpenTelemetry is absent
    trace = None  # type: ignore[assignment]

__all__ = ["CallSpan", "enabled"]


def enabled() -> bool:
    """
    @return: Whether the OpenTelemetry API is importable.
    """
    return trace is not None


@functools.cache
def _tracer() -> Any:
    """
    The gateway's tracer, asked of the tracer provider once, at the first
    call (by then an SDK configured at start-up is in place; a provider set
    later is still used: the API's proxy tracer delegates to it).
    """
    return trace.get_tracer("mcpgateway")


class CallSpan:
    """
    The span of one tool call (or nothing, without OpenTelemetry).
    """

    def __init__(self, service: str, tool: str, session_id: str) -> None:
        """
        Start the span C{tools/call <service>.<tool>} as a client span.
        """
        self._span: Span | None = None
        if trace is None:
            return
        self._span = _tracer().start_span(
            f"tools/call {service}.{tool}",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "mcp.method.name": "tools/call",
                "gen_ai.tool.name": tool,
                "mcpgateway.service": service,
                "mcp.session.id": session_id,
            },
        )

    def meta(self) -> dict[str, Any]:
        """
        @return: C{_meta} entries carrying the span's context (C{traceparent},
            C{tracestate}), empty when not recording.
        """
        if self._span is None or not self._span.get_span_context().is_valid:
            return {}
        carrier: dict[str, Any] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(self._span))
        return carrier

    def end(self, outcome: str) -> None:
        """
        End the span with the call's outcome (C{ok}, C{tool_error} or an error code).
        """
        if self._span is None:
            return
        self._span.set_attribute("mcpgateway.outcome", outcome)
        if outcome not in ("ok", "tool_error"):
            self._span.set_status(Status(StatusCode.ERROR, outcome))
        self._span.end()
