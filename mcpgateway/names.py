"""
What a service name, a tool name, a session id and a principal's name may
look like.
"""

from __future__ import annotations

import re

from mcpgateway.errors import BadRequest

__all__ = ["PRINCIPAL_NAME", "SERVICE_NAME", "SESSION_ID", "TOOL_NAME", "check_name"]

SERVICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
# Not "." or "..": a URL path cannot carry them (clients and servers
# normalise dot segments away), so DELETE /sessions/<id> could not name it.
SESSION_ID = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9_.-]{1,128}")
#: A principal's name (its Basic user name); C{@} for e-mail-like names.
PRINCIPAL_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,128}")

_RULES = {
    SERVICE_NAME: "1-64 characters of A-Z a-z 0-9 _ -",
    TOOL_NAME: "1-128 characters of A-Z a-z 0-9 _ . -",
    SESSION_ID: "1-128 characters of A-Z a-z 0-9 _ . - (not . or ..)",
}


def check_name(value: object, pattern: re.Pattern[str], field: str, code: str) -> str:
    """
    @param value: What the client sent.
    @param pattern: L{SERVICE_NAME}, L{TOOL_NAME} or L{SESSION_ID}.
    @param field: The field's name, for the message.
    @param code: The error code when it does not match.
    @return: C{value}, known to be a matching string.
    @raise BadRequest: Otherwise.
    """
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BadRequest(f"{field} must be {_RULES[pattern]}", code)
    return value
