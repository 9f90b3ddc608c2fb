"""
Logging: every mcpgateway logger publishes through one filter whose level
comes from the configuration's C{logging.level}; C{logging.file} adds a file
of JSON lines.

Every event of an mcpgateway logger is redacted by value on its way to the
global publisher (L{redacting}): a loaded secret never reaches a log file,
twistd's log or the JSON lines, even when a child writes it to its stderr.
"""

from __future__ import annotations

import datetime
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    jsonFileLogObserver,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from mcpgateway.lib.redact import SECRET_VALUES

__all__ = ["configure", "json_logger", "logger", "now_iso", "redacting"]

#: Event keys Twisted itself sets, never from a caller or a child.
_OWN_KEYS = frozenset({"log_logger", "log_level", "log_namespace", "log_source", "log_time", "log_trace"})


def _redacted_failure(failure: Failure) -> Failure:
    """
    @return: C{failure}, or a stand-in without a traceback when its text
        holds a secret value.
    """
    if not SECRET_VALUES.contains(failure.getTraceback()):
        return failure
    return Failure(
        RuntimeError(SECRET_VALUES.text(f"{getattr(failure.type, '__name__', 'Error')}: {failure.getErrorMessage()}"))
    )


@implementer(ILogObserver)
class _Redacting:
    """
    Passes each event on with every loaded secret value in its format and
    fields replaced by C{[secret:NAME]}.
    """

    def __init__(self, observer: ILogObserver) -> None:
        self._observer = observer

    def __call__(self, event: dict[str, Any]) -> None:
        if SECRET_VALUES:
            event = redact_event(event)
        self._observer(event)


def redact_event(event: dict[str, Any]) -> dict[str, Any]:
    """
    @return: A copy of a log event with every loaded secret value in it
        (the format, the fields, a failure's text) redacted.
    """
    copy: dict[str, Any] = {}
    for key, value in event.items():
        if key in _OWN_KEYS or value is None or isinstance(value, (bool, int, float)):
            copy[key] = value
        elif isinstance(value, Failure):
            copy[key] = _redacted_failure(value)
        elif isinstance(value, (str, dict, list, tuple)):
            copy[key] = SECRET_VALUES.value(value)
        else:
            text = str(value)
            copy[key] = SECRET_VALUES.text(text) if SECRET_VALUES.contains(text) else value
    return copy


def redacting(observer: ILogObserver) -> ILogObserver:
    """
    @return: An observer that redacts each event (L{redact_event}) and
        passes it to C{observer}.
    """
    return _Redacting(observer)


_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(redacting(globalLogPublisher), [_levels])


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
