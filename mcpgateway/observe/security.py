"""
The security-event log: authentication failures, rate-limit hits, invalid
input, children killed by a resource limit.  Each event is a structured log
event in the C{mcpgateway.observe.security} namespace (so it shows in the gateway's
log) and, with C{logging.security_file}, one JSON line in that file.
"""

from __future__ import annotations

import collections
import json
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from zope.interface import implementer

from mcpgateway.observe.logs import logger, now_iso

__all__ = ["RecentSecurityEvents", "SecurityFile", "security_event"]

log = logger("mcpgateway.security")
_MAX_FIELD = 256


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return "".join(ch for ch in value[:_MAX_FIELD] if ch.isprintable())
    return value


def security_event(kind: str, *, address: str, principal: str | None, route: str, **fields: Any) -> None:
    """
    Record a security event.

    @param kind: C{auth_failure}, C{rate_limited}, C{invalid_input}, C{child_limit}, ...
    @param address: The client's address (or C{"-"}).
    @param principal: The authenticated principal, if any.
    @param route: The method and path, or the service for child events.
    @param fields: More JSON-safe detail (strings are truncated and stripped
        of control characters: they may come from the client).
    """
    details = {key: _clean(value) for key, value in fields.items()}
    log.warn(
        "security event {security_event} from {address} ({principal}) on {route}: {details}",
        security_event=kind,
        address=_clean(address),
        principal=_clean(principal) if principal else "-",
        route=_clean(route),
        details=details,
    )


def _line(event: LogEvent) -> dict[str, Any]:
    return {
        "time": now_iso(event.get("log_time", 0.0)),
        "event": event["security_event"],
        "address": event.get("address"),
        "principal": None if event.get("principal") == "-" else event.get("principal"),
        "route": event.get("route"),
        **event.get("details", {}),
    }


@implementer(ILogObserver)
class RecentSecurityEvents:
    """
    The last security events, in memory, for the admin dashboard.
    """

    def __init__(self, size: int = 50) -> None:
        """
        @param size: How many are kept.
        """
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)

    def __call__(self, event: LogEvent) -> None:
        if event.get("security_event") is not None:
            self._events.appendleft(_line(event))

    def recent(self) -> list[dict[str, Any]]:
        """
        @return: The events kept, newest first, as C{logging.security_file} writes them.
        """
        return list(self._events)

    def start(self) -> None:
        """
        Start listening to the log.
        """
        globalLogPublisher.addObserver(self)

    def stop(self) -> None:
        """
        Stop listening to the log.
        """
        globalLogPublisher.removeObserver(self)


@implementer(ILogObserver)
class SecurityFile:
    """
    Writes each security event as one JSON line to a file.
    """

    def __init__(self, stream: IO[str]) -> None:
        """
        @param stream: An open text file (line-buffered appends).
        """
        self._stream = stream

    def __call__(self, event: LogEvent) -> None:
        if event.get("security_event") is None:
            return
        self._stream.write(json.dumps(_line(event), separators=(",", ":")) + "\n")
        self._stream.flush()

    @classmethod
    def open(cls, path: str) -> SecurityFile:
        """
        Start writing events to C{path} (appending).

        @return: The observer, already added to the global log publisher.
        """
        observer = cls(open(path, "a", encoding="utf-8"))  # noqa: SIM115 - lives as long as the process
        globalLogPublisher.addObserver(observer)
        return observer
