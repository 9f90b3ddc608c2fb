"""
What the audit log stores of a call, and how: a record is when the call
started, who made it (principal, address), by which door (C{rest},
C{mcp}), the service, tool and session, the arguments (redacted and
capped), the outcome (C{ok}, C{tool_error} or the error code) and HTTP
status, the latency, the size of the result and, for the services that opt
in, the result itself (redacted and capped).

L{RowMaker} turns a queued call into that row, in the audit writer thread
(L{mcpgateway.observe.audit}): redaction by key (L{Redactor}) then by value
(every loaded secret), JSON, caps.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mcpgateway.config import AuditConfig
from mcpgateway.lib.redact import SECRET_VALUES

__all__ = ["REDACTED", "Redactor", "RowMaker"]

#: What a redacted value is replaced with.
REDACTED = "[redacted]"
#: Nesting deeper than this is not copied (REST bodies stop at 64 levels).
MAX_DEPTH = 100

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=repr).encode
_encode_ascii = json.JSONEncoder(separators=(",", ":"), default=repr).encode


def _glob(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """
    @return: One case-insensitive regular expression matching any of the globs.
    """
    if not patterns:
        return None
    return re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns), re.IGNORECASE)


class Redactor:
    """
    Replaces secret values with L{REDACTED}: every value whose key matches
    C{audit.redact_keys} (at any depth), and for a tool the argument paths its
    C{audit.redact} rules name.  Lists are transparent: C{auth.token} also
    names C{token} in each object of a list C{auth}.
    """

    def __init__(self, keys: Sequence[str], rules: Mapping[str, Sequence[str]]) -> None:
        """
        @param keys: Case-insensitive globs of keys.
        @param rules: C{"service/tool"} globs to argument paths (dotted,
            each part a case-insensitive glob).
        """
        self._keys = _glob(keys)
        self._rules = [
            (_glob([tool]), tuple(tuple(_glob([part]) for part in path.split(".")) for path in paths))
            for tool, paths in rules.items()
        ]
        self._paths: dict[str, tuple[tuple[Any, ...], ...]] = {}

    def paths(self, service: str, tool: str) -> tuple[tuple[re.Pattern[str], ...], ...]:
        """
        @return: The argument paths redacted for C{service}'s C{tool}.
        """
        name = f"{service}/{tool}"
        found = self._paths.get(name)
        if found is None:
            found = tuple(path for pattern, paths in self._rules if pattern and pattern.match(name) for path in paths)
            if len(self._paths) >= 4096:
                self._paths.clear()
            self._paths[name] = found
        return found

    def arguments(self, service: str, tool: str, arguments: Any) -> Any:
        """
        @return: A redacted copy of C{service}'s C{tool}'s arguments.
        """
        return self.value(arguments, self.paths(service, tool))

    def value(self, value: Any, paths: tuple[tuple[re.Pattern[str], ...], ...] = (), depth: int = 0) -> Any:
        """
        @param paths: The argument paths still to match below C{value}.
        @return: A redacted copy of C{value}.
        """
        if isinstance(value, list):
            return [self.value(item, paths, depth + 1) for item in value] if depth < MAX_DEPTH else "[too deep]"
        if not isinstance(value, dict):
            return value
        if depth >= MAX_DEPTH:
            return "[too deep]"
        copy = {}
        keys = self._keys
        for key, item in value.items():
            name = str(key)
            if keys is not None and keys.match(name):
                copy[key] = REDACTED
                continue
            below = []
            hit = False
            for path in paths:
                if path[0] is not None and path[0].match(name):
                    if len(path) == 1:
                        hit = True
                        break
                    below.append(path[1:])
            copy[key] = REDACTED if hit else self.value(item, tuple(below), depth + 1)
        return copy


def _capped(value: Any, cap: int) -> tuple[str, int, bool]:
    """
    @return: C{value}'s JSON text, at most C{cap} bytes of it (cut at a
        character), its full size in bytes, and whether it was cut.
    """
    text = _encode(value)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \\ud800 escape
        text = _encode_ascii(value)
        data = text.encode("ascii")
    if len(data) <= cap:
        return text, len(data), False
    return data[:cap].decode("utf-8", "ignore"), len(data), True


def _text(value: str, limit: int = 256) -> str:
    """
    @return: C{value} without NUL (PostgreSQL refuses it), at most C{limit} characters.
    """
    return value.replace("\x00", "")[:limit]


def _mcp_result(front: str, result: Any) -> Any:
    """
    @return: The call's result as MCP gives it, whichever door: a REST answer
        becomes C{{"content", "isError", "structuredContent"}}.
    """
    if front == "rest" and isinstance(result, dict) and "content" in result:
        normal = {"content": result["content"], "isError": bool(result.get("is_error"))}
        if "structured_content" in result:
            normal["structuredContent"] = result["structured_content"]
        return normal
    return result


class RowMaker:
    """
    Makes the rows of queued calls, by the C{audit} section's rules.

    @ivar gateway: This gateway's name in each row.
    @ivar redactor: Redacts arguments and results by key.
    """

    def __init__(self, config: AuditConfig, gateway: str) -> None:
        """
        @param config: The C{audit} section.
        @param gateway: This gateway's name in each row.
        """
        self.config = config
        self.gateway = _text(gateway)
        self.redactor = Redactor(config.redact_keys, config.redact)
        self._results = _glob(config.results)

    def row(self, item: tuple[Any, ...]) -> tuple[Any, ...]:
        """
        @param item: A queued call, as L{mcpgateway.observe.audit.AuditLog.record}
            queues it.
        @return: Its row (L{mcpgateway.observe.auditsql.COLUMNS}).
        """
        started, principal, address, front, service, tool, session, arguments, outcome, status, seconds, result = item
        config = self.config
        # By key (the configured globs), then by value (every loaded secret).
        redacted = SECRET_VALUES.value(self.redactor.arguments(service, tool, arguments))
        arguments_text, _, arguments_cut = _capped(redacted, config.max_argument_bytes)
        result_bytes = result_text = None
        result_cut = False
        if result is not None:
            normal = _mcp_result(front, result)
            if self._results is not None and self._results.match(service):
                result_text, result_bytes, result_cut = _capped(
                    SECRET_VALUES.value(self.redactor.value(normal)), config.max_result_bytes
                )
                if not result_cut:  # the redacted text's size: measure the result itself
                    result_bytes = _capped(normal, 1 << 62)[1]
            else:
                result_bytes = _capped(normal, 1 << 62)[1]
        return (
            started,
            self.gateway,
            _text(SECRET_VALUES.text(principal)),
            _text(address),
            _text(front),
            _text(service),
            _text(tool),
            _text(SECRET_VALUES.text(session)),
            arguments_text,
            int(arguments_cut),
            _text(outcome),
            status,
            round(seconds * 1000, 3),
            result_bytes,
            result_text,
            int(result_cut),
        )
