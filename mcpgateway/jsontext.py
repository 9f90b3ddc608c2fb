"""
Strict JSON for bodies that reach a child.

C{json.loads} is lenient in ways a gateway must not pass on: it guesses
UTF-16 and UTF-32 from the first bytes, accepts C{NaN} and C{Infinity}, turns
C{1e400} into C{inf} (which C{json.dumps} then writes as C{Infinity}, not
JSON), and recurses once per nesting level, so a deeply nested value either
fails while parsing or, a few levels shallower, while being written to the
child.  L{loads} accepts only what RFC 8259 calls JSON, as UTF-8, nested at
most L{MAX_DEPTH} levels; L{dumps} never writes a non-finite number.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["MAX_DEPTH", "JSONTextError", "dumps", "loads"]

#: The deepest nesting of arrays and objects accepted in a body.
MAX_DEPTH = 64


class JSONTextError(ValueError):
    """
    The text is not JSON this gateway accepts; the message says why.
    """


def _constant(name: str) -> Any:
    raise JSONTextError(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONTextError(f"the number {text[:40]} is out of range")
    return value


def _too_deep(raw: str) -> bool:
    """
    Whether C{raw} nests arrays or objects more than L{MAX_DEPTH} levels
    deep, counting brackets outside strings (one linear pass, no recursion).
    """
    depth = 0
    in_string = False
    escaped = False
    for char in raw:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif char in "]}":
            depth -= 1
    return False


def loads(data: bytes) -> Any:
    """
    Parse a UTF-8 JSON text strictly.

    @param data: The raw body.
    @return: The value.
    @raise JSONTextError: For bytes that are not UTF-8, text that is not
        JSON, C{NaN}/C{Infinity}, a number out of range, or nesting deeper
        than L{MAX_DEPTH}; the message is fit for the client.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JSONTextError(f"the body is not UTF-8 (byte {error.start})") from None
    if text.startswith("\ufeff"):
        raise JSONTextError("the body starts with a byte order mark")
    if ("[" in text or "{" in text) and _too_deep(text):
        raise JSONTextError(f"nested more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(text, parse_constant=_constant, parse_float=_float)
    except JSONTextError:
        raise
    except json.JSONDecodeError as error:
        raise JSONTextError(f"{error.msg} (line {error.lineno} column {error.colno})") from None
    except (ValueError, RecursionError) as error:
        raise JSONTextError(str(error) or type(error).__name__) from None


def dumps(value: Any) -> str:
    """
    Serialise compactly; a non-finite float raises C{ValueError} instead of
    producing C{NaN} or C{Infinity}.
    """
    return json.dumps(value, separators=(",", ":"), allow_nan=False)
