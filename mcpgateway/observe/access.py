"""
The access log: one line per tool call (principal, service, tool, session,
status, outcome, duration).

By default the lines are events of the Twisted log (namespace
C{mcpgateway.observe.access}), which twistd formats and writes one by one.  At high
call rates that costs about a tenth of the gateway's CPU, so
C{logging.access_log} may instead name a file: lines are then buffered as
JSON and written once a second (and at shutdown) by the reactor.
C{"off"} writes nothing.
"""

from __future__ import annotations

import json
import time
from typing import IO

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from mcpgateway.lib.redact import SECRET_VALUES
from mcpgateway.observe.logs import logger

__all__ = ["AccessLog"]

_log = logger("mcpgateway.access")
#: C{json.dumps(record, separators=(",", ":"))}, without building an encoder per line.
_encode = json.JSONEncoder(separators=(",", ":")).encode


class AccessLog:
    """
    Records tool calls to the Twisted log, to a buffered file, or nowhere.
    """

    def __init__(self, mode: str = "log", clock: IReactorTime | None = None, flush_interval: float = 1.0) -> None:
        """
        @param mode: C{"log"}, C{"off"}, or the path of a JSON-lines file.
        @param clock: Schedules the flushes of a file (the reactor by default).
        @param flush_interval: Seconds between flushes of a file.
        """
        self.mode = mode
        self._lines: list[str] = []
        self._file: IO[str] | None = None
        self._flusher: LoopingCall | None = None
        self._interval = flush_interval
        self._clock = clock

    def start(self) -> None:
        """
        Open the file (if any) and start flushing it.
        """
        if self.mode in ("log", "off") or self._file is not None:
            return
        self._file = open(self.mode, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self._flusher = LoopingCall(self.flush)
        if self._clock is not None:
            self._flusher.clock = self._clock
        self._flusher.start(self._interval, now=False)

    def stop(self) -> None:
        """
        Flush and close the file (if any).
        """
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None

    def flush(self) -> None:
        """
        Write the buffered lines.
        """
        if self._file is not None and self._lines:
            lines, self._lines = self._lines, []
            self._file.write("".join(lines))
            self._file.flush()

    def call(
        self, *, principal: str, service: str, tool: str, session: str, status: int, outcome: str, seconds: float
    ) -> None:
        """
        Record one tool call.
        """
        if self.mode == "off":
            return
        if self.mode == "log" or self._file is None:
            _log.info(
                "call {principal} {service} {tool} session={session} status={status} {outcome} {ms:.2f} ms",
                principal=principal,
                service=service,
                tool=tool,
                session=session,
                status=status,
                outcome=outcome,
                ms=seconds * 1000,
            )
            return
        record = {
            "time": round(time.time(), 3),
            "principal": principal,
            "service": service,
            "tool": tool,
            "session": session,
            "status": status,
            "outcome": outcome,
            "ms": round(seconds * 1000, 3),
        }
        # The file bypasses the loggers' redaction: a caller may have used a
        # secret as its session id (the audit log redacts it too).
        self._lines.append(_encode(SECRET_VALUES.value(record)) + "\n")
