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
import operator
import re
from itertools import accumulate
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThread

__all__ = ["MAX_DEPTH", "THREAD_BYTES", "JSONTextError", "dumps", "loads", "parse"]

#: The deepest nesting of arrays and objects accepted in a body.
MAX_DEPTH = 64
#: Bodies larger than this are parsed in the reactor's thread pool (a
#: pathological 10 MiB body takes about a second to parse).
THREAD_BYTES = 64 * 1024


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


#: What L{loads} and L{dumps} use, built once (C{json.loads} and C{json.dumps}
#: with options build one per call).
_DECODER = json.JSONDecoder(parse_constant=_constant, parse_float=_float)
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


_BRACKETS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_RUNS = re.compile(rb"\(+|\)+")


def _too_deep(text: bytes) -> bool:
    """
    Whether the JSON text C{text} (already parsed, so well formed) nests
    arrays and objects more than L{MAX_DEPTH} levels deep, the outermost
    counting as one.

    Its brackets outside strings, as C{(} and C{)}, are checked with C-speed
    bytes operations, never a Python loop per byte or per value: a 10 MiB
    body costs less here than its parse.  Removing every C{()} peels one
    level off every innermost pair; a few such passes shrink the usual
    shapes to almost nothing, and the depth of what is left is the running
    sum of its runs of openers and closers.
    """
    if text.count(b"[") + text.count(b"{") <= MAX_DEPTH:
        return False
    # Escapes first (in well-formed JSON, backslashes are only in strings),
    # then every other quote-delimited part is a string.
    outside = b"".join(text.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[::2])
    brackets = outside.translate(_BRACKETS, _NOT_BRACKETS)
    limit = MAX_DEPTH
    for _ in range(8):
        if brackets.count(b"(") <= limit:
            return False
        if b"(" * (limit + 1) in brackets:
            return True
        shorter = brackets.replace(b"()", b"")
        if len(shorter) == len(brackets):
            break
        brackets = shorter
        limit -= 1
    runs = list(map(len, _RUNS.findall(brackets)))
    runs[1::2] = map(operator.neg, runs[1::2])
    return max(accumulate(runs), default=0) > limit


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
    try:
        value = _DECODER.decode(text)  # json.loads(text, parse_constant=..., parse_float=...)
    except JSONTextError:
        raise
    except RecursionError:
        # The C parser recurses once per level: far deeper than MAX_DEPTH.
        raise JSONTextError(f"nested more than {MAX_DEPTH} levels deep") from None
    except json.JSONDecodeError as error:
        raise JSONTextError(f"{error.msg} (line {error.lineno} column {error.colno})") from None
    except ValueError as error:
        if "integer string conversion" in str(error):
            raise JSONTextError("an integer has more digits than the 4300 allowed") from None
        raise JSONTextError(str(error) or type(error).__name__) from None
    if isinstance(value, (dict, list)) and _too_deep(data):
        raise JSONTextError(f"nested more than {MAX_DEPTH} levels deep")
    return value


def parse(data: bytes) -> Deferred[Any]:
    """
    L{loads}, on the reactor thread for a small body (the usual tool call:
    a thread hop would cost more than the parse) and in the thread pool for
    one over L{THREAD_BYTES}, so that no body can stall other requests.

    @param data: The raw body.
    @return: Fires with the value, or fails with L{JSONTextError}.
    """
    if len(data) <= THREAD_BYTES:
        return maybeDeferred(loads, data)
    return deferToThread(loads, data)


def dumps(value: Any) -> str:
    """
    Serialise compactly; a non-finite float raises C{ValueError} instead of
    producing C{NaN} or C{Infinity}.
    """
    return _ENCODER.encode(value)
