"""
Which audit records to read: L{Query}, read from C{GET /audit}'s query
string (L{query_from_params}) or built by C{mcp-gateway audit export}, and
the opaque cursor of the next page.

A cursor is the position C{(time, id)} of a page's last record: the
storages read pages by keyset on it (L{mcpgateway.observe.auditsql}).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mcpgateway.errors import BadRequest
from mcpgateway.names import SERVICE_NAME, TOOL_NAME

__all__ = ["MAX_LIMIT", "Query", "decode_cursor", "encode_cursor", "parse_time", "query_from_params"]

#: The largest page of L{mcpgateway.observe.auditsql.Storage.select}.
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


@dataclass(frozen=True)
class Query:
    """
    Which records to read, and one page of them.

    @ivar principal: Only this principal's calls.
    @ivar service: Only calls to this service.
    @ivar tool: Only calls of this tool.
    @ivar outcomes: Only calls with one of these outcomes (C{ok},
        C{tool_error}, an error code); all if empty.
    @ivar since: Only calls started at or after this POSIX time.
    @ivar until: Only calls started before this POSIX time.
    @ivar limit: At most this many records.
    @ivar after: The position C{(time, id)} of the previous page's last record.
    @ivar newest_first: The order: newest first, or oldest first.
    """

    principal: str | None = None
    service: str | None = None
    tool: str | None = None
    outcomes: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None
    limit: int = DEFAULT_LIMIT
    after: tuple[float, int] | None = None
    newest_first: bool = True


def encode_cursor(time: float, row_id: int) -> str:
    """
    @return: The opaque cursor for the position C{(time, id)}.
    """
    return base64.urlsafe_b64encode(f"{time!r}:{row_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, int]:
    """
    @return: The position L{encode_cursor} encoded.
    @raise ValueError: If C{cursor} is not one.
    """
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        time, row_id = text.split(":")
        position = float(time), int(row_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor of this API") from None
    if not math.isfinite(position[0]):
        raise ValueError("not a cursor of this API")
    return position


_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")


def parse_time(text: str) -> float:
    """
    @param text: POSIX seconds (C{1767225600}, C{1767225600.5}) or ISO-8601
        (C{2026-01-01}, C{2026-01-01T12:00:00Z}, C{...+02:00}; without an
        offset, UTC).
    @return: POSIX seconds.
    @raise ValueError: If it is neither.
    """
    text = text.strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    iso = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
    try:
        when = datetime.datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(f"{text!r} is neither POSIX seconds nor an ISO-8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


_PRINCIPAL = re.compile(r"[A-Za-z0-9_.@-]{1,128}")
_OUTCOME = re.compile(r"[a-z0-9_]{1,64}")
_PARAMETERS = ("principal", "service", "tool", "outcome", "since", "until", "limit", "cursor")


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = [value for value in params.get(name, ()) if value != ""]
    if len(values) > 1:
        raise BadRequest(f"{name} is given {len(values)} times; give it once", f"invalid_{name}")
    return values[0] if values else None


def _matching(value: str | None, pattern: re.Pattern[str], name: str, rule: str) -> str | None:
    if value is not None and not pattern.fullmatch(value):
        raise BadRequest(f"{name} must be {rule}", f"invalid_{name}")
    return value


def query_from_params(params: Mapping[str, Sequence[str]]) -> Query:
    """
    Read the query string of C{GET /audit}.

    @param params: Each parameter's values (an empty value counts as absent).
    @return: The query, newest first.
    @raise BadRequest: C{invalid_query} for an unknown parameter, else
        C{invalid_<parameter>} naming what is wrong.
    """
    unknown = sorted(set(params) - set(_PARAMETERS))
    if unknown:
        known = ", ".join(_PARAMETERS)
        raise BadRequest(f"unknown query parameter {unknown[0]!r} (known: {known})", "invalid_query")
    outcome = _one(params, "outcome")
    outcomes = tuple(outcome.split(",")) if outcome is not None else ()
    for item in outcomes:
        _matching(item, _OUTCOME, "outcome", "ok, tool_error or error codes (a-z 0-9 _), comma-separated")
    times: dict[str, float | None] = {}
    for name in ("since", "until"):
        text = _one(params, name)
        try:
            times[name] = parse_time(text) if text is not None else None
        except ValueError as error:
            raise BadRequest(f"{name}: {error}", f"invalid_{name}") from None
    since, until = times["since"], times["until"]
    if since is not None and until is not None and until <= since:
        raise BadRequest("until must be later than since", "invalid_until")
    limit_text = _one(params, "limit")
    limit = DEFAULT_LIMIT
    if limit_text is not None:
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
            raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}", "invalid_limit")
        limit = int(limit_text)
    cursor = _one(params, "cursor")
    try:
        after = decode_cursor(cursor) if cursor is not None else None
    except ValueError as error:
        raise BadRequest(f"cursor: {error} (use next_cursor as it was given)", "invalid_cursor") from None
    return Query(
        principal=_matching(_one(params, "principal"), _PRINCIPAL, "principal", "1-128 of A-Z a-z 0-9 _ . @ -"),
        service=_matching(_one(params, "service"), SERVICE_NAME, "service", "1-64 of A-Z a-z 0-9 _ -"),
        tool=_matching(_one(params, "tool"), TOOL_NAME, "tool", "1-128 of A-Z a-z 0-9 _ . -"),
        outcomes=outcomes,
        since=since,
        until=until,
        limit=limit,
        after=after,
    )
