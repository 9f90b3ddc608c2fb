"""
A short, rolling picture of the tool calls for the admin dashboard: per
service, calls, errors and latencies in buckets of C{bucket} seconds over
the last C{window} seconds, and the last failed calls.

It is a L{mcpgateway.calls.CallObserver}: each call costs an append to the
current bucket (latencies beyond L{MAX_SAMPLES} a bucket are counted but
not kept); rates and percentiles are worked out only when the dashboard
asks (L{CallStats.snapshot}).  A call is an error unless its outcome is
C{ok}: a tool's own error (C{tool_error}) counts too.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReactorTime

from mcpgateway.observe.logs import now_iso

__all__ = ["MAX_SAMPLES", "CallStats"]

#: Latencies kept per service and bucket (enough for the percentiles shown).
MAX_SAMPLES = 256
#: Failed calls remembered.
RECENT_ERRORS = 50


@dataclass
class _Bucket:
    start: float
    calls: int = 0
    errors: int = 0
    seconds: list[float] = field(default_factory=list)
    #: Its p99 (seconds) once it is over: a closed bucket never changes.
    p99: float | None = None
    closed: bool = False

    def percentile_99(self, now_start: float) -> float | None:
        if self.closed:
            return self.p99
        p99 = _percentile(sorted(self.seconds), 0.99)
        if self.start < now_start:
            self.p99, self.closed = p99, True
        return p99


def _percentile(ordered: list[float], fraction: float) -> float | None:
    """
    @return: The nearest-rank percentile of C{ordered} (sorted), or L{None} if empty.
    """
    if not ordered:
        return None
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class CallStats:
    """
    Calls per service in a rolling window, and the recent failures.

    @ivar window: Seconds shown.
    @ivar bucket: Seconds per bucket (one point of the dashboard's chart).
    """

    def __init__(self, clock: IReactorTime, window: float = 300.0, bucket: float = 5.0) -> None:
        self.clock = clock
        self.window = window
        self.bucket = bucket
        self._buckets: dict[str, collections.deque[_Bucket]] = {}
        self._errors: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_ERRORS)

    def record(self, record: Any) -> None:
        """
        Count one call (a L{mcpgateway.calls.CallRecord}) in its service's
        current bucket; never blocks.
        """
        request = record.request
        now = self.clock.seconds()
        start = now - now % self.bucket
        buckets = self._buckets.get(request.service)
        if buckets is None:
            buckets = self._buckets[request.service] = collections.deque()
        if not buckets or buckets[-1].start != start:
            buckets.append(_Bucket(start))
            while buckets and buckets[0].start <= now - self.window:
                buckets.popleft()
        current = buckets[-1]
        current.calls += 1
        if len(current.seconds) < MAX_SAMPLES:
            current.seconds.append(record.seconds)
        if record.outcome != "ok":
            current.errors += 1
            self._errors.appendleft(
                {
                    "time": now_iso(record.started + record.seconds),
                    "service": request.service,
                    "tool": request.tool,
                    "principal": request.principal.name,
                    "session_id": request.session_id,
                    "outcome": record.outcome,
                    "status": record.status,
                }
            )

    def recent_errors(self) -> list[dict[str, Any]]:
        """
        @return: The last failed calls, newest first.
        """
        return list(self._errors)

    def snapshot(self, services: list[str], recent: float = 60.0) -> dict[str, Any]:
        """
        The dashboard's numbers.

        @param services: The services to show (each gets an entry, called or not).
        @param recent: Seconds the summary (rate, percentiles, error rate) covers.
        @return: C{{"window": .., "bucket": .., "services": {name: {"rate",
            "p50_ms", "p99_ms", "error_rate", "calls", "series": [[t, calls,
            errors, p99_ms], ...]}}}}, times as POSIX seconds.
        """
        now = self.clock.seconds()
        first = now - now % self.bucket - self.window + self.bucket
        result: dict[str, Any] = {}
        for name in services:
            kept = [b for b in self._buckets.get(name, ()) if b.start >= first]
            latest = [b for b in kept if b.start > now - recent]
            calls = sum(b.calls for b in latest)
            errors = sum(b.errors for b in latest)
            ordered = sorted(s for b in latest for s in b.seconds)
            p50, p99 = _percentile(ordered, 0.5), _percentile(ordered, 0.99)
            by_start = {b.start: b for b in kept}
            series = []
            start = first
            current = now - now % self.bucket
            while start <= now:
                b = by_start.get(start)
                if b is None:
                    series.append([start, 0, 0, None])
                else:
                    p = b.percentile_99(current)
                    series.append([start, b.calls, b.errors, None if p is None else round(p * 1000, 3)])
                start += self.bucket
            result[name] = {
                "calls": calls,
                "rate": round(calls / recent, 3),
                "error_rate": round(errors / calls, 4) if calls else 0.0,
                "p50_ms": None if p50 is None else round(p50 * 1000, 3),
                "p99_ms": None if p99 is None else round(p99 * 1000, 3),
                "series": series,
            }
        return {"window": self.window, "bucket": self.bucket, "recent": recent, "services": result}
