"""
Logging: every mcpgateway logger publishes through one filter whose level
comes from the configuration's C{logging.level}; C{logging.file} adds a file
of JSON lines.
"""

from __future__ import annotations

import datetime

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    jsonFileLogObserver,
)

__all__ = ["configure", "json_logger", "logger", "now_iso"]

_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_levels])


def logger(namespace: str) -> Logger:
    """
    @param namespace: The logger's namespace, e.g. C{"mcpgateway.child.todo"}.
    @return: A L{Logger} subject to the configured level.
    """
    return Logger(namespace=namespace, observer=_observer)


def configure(level: str, file: str = "") -> ILogObserver | None:
    """
    Apply the C{logging} section.

    @param level: C{DEBUG}, C{INFO}, C{WARNING}, C{ERROR} or C{CRITICAL}.
    @param file: A path to append JSON log lines to, or C{""}.
    @return: The file observer added to the global publisher, if any (remove it to stop).
    """
    name = {"WARNING": "warn", "CRITICAL": "critical"}.get(level.upper(), level.lower())
    _levels.setLogLevelForNamespace("", LogLevel.levelWithName(name))
    if not file:
        return None
    observer = jsonFileLogObserver(open(file, "a", encoding="utf-8"))  # noqa: SIM115 - lives as long as the process
    globalLogPublisher.addObserver(observer)
    return observer


def json_logger() -> ILogObserver:
    """
    A log observer factory for twistd: C{twistd --logger mcpgateway.observe.logs.json_logger ...}
    writes every log event as one JSON object per line to standard output
    (for containers and log shippers).

    @return: The observer.
    """
    import sys

    return jsonFileLogObserver(sys.stdout)


def now_iso(seconds: float) -> str:
    """
    @param seconds: POSIX time.
    @return: UTC ISO-8601 with a C{Z}, millisecond precision.
    """
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
