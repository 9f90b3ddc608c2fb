"""
Redaction by value: every known secret value, wherever it turns up in a
text, becomes C{[secret:NAME]}.

Redacting by key (C{"password": ...}) misses a secret a child echoes in its
stderr, in an error message or in a tool result; redacting by value does not,
as long as the values are known.  The process has one L{SECRET_VALUES}: the
credential store fills it as it loads, and every exit a secret could leave by
(log events, audit rows, error bodies, C{/metrics}, stderr tails) passes its
text through it.  With no secret loaded it costs one truth test.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["MIN_SECRET_LENGTH", "SECRET_VALUES", "SecretValues"]

#: Shorter values cannot be redacted without mangling ordinary text.
MIN_SECRET_LENGTH = 8
_MAX_DEPTH = 64


class SecretValues:
    """
    Secret values by owner (each credential store replaces its own set), and
    the redaction of texts and JSON-like values against all of them.
    """

    def __init__(self) -> None:
        #: Value -> name, by owner.
        self._owned: dict[object, dict[str, str]] = {}
        self._names: dict[str, str] = {}
        self._pattern: re.Pattern[str] | None = None
        self._longest = 0

    def __bool__(self) -> bool:
        return self._pattern is not None

    def set(self, owner: object, values: Iterable[tuple[str, str]]) -> None:
        """
        Replace the values C{owner} holds.

        @param owner: Whoever loaded them (a credential store).
        @param values: C{(name, value)} pairs (a name may come with several
            values: one replaced by a reload is still held by older
            children); values shorter than L{MIN_SECRET_LENGTH} are ignored
            (the store refuses them).
        """
        self._owned[owner] = {value: name for name, value in values if len(value) >= MIN_SECRET_LENGTH}
        self._rebuild()

    def forget(self, owner: object) -> None:
        """
        Drop the values C{owner} holds.
        """
        self._owned.pop(owner, None)
        self._rebuild()

    def _rebuild(self) -> None:
        names: dict[str, str] = {}
        for values in self._owned.values():
            for value, name in values.items():
                names.setdefault(value, name)
        # Longest first, so a secret that contains another is replaced whole.
        ordered = sorted(names, key=len, reverse=True)
        pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        # One assignment each: a reader on another thread (the audit
        # writer) sees the old set or the new one.
        self._names = names
        self._pattern = pattern
        self._longest = len(ordered[0]) if ordered else 0

    def text(self, text: str) -> str:
        """
        @return: C{text} with every secret value replaced by C{[secret:NAME]}.
        """
        pattern, names = self._pattern, self._names
        if pattern is None:
            return text
        return pattern.sub(lambda match: f"[secret:{names.get(match.group(0), '?')}]", text)

    def head(self, text: str, length: int) -> str:
        """
        @return: The first C{length} characters of C{text}, redacted before
            the cut: a secret the cut would split leaves no piece behind.
        """
        if self._pattern is None:
            return text[:length]
        return self.text(text[: length + self._longest])[:length]

    def contains(self, text: str) -> bool:
        """
        @return: Whether C{text} holds a secret value.
        """
        pattern = self._pattern
        return pattern is not None and pattern.search(text) is not None

    def value(self, value: Any, depth: int = 0) -> Any:
        """
        @return: A copy of a JSON-like value (strings, lists, dicts, keys
            included) with every string redacted; other values as they are.
        """
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if depth > _MAX_DEPTH:
            return value
        if isinstance(value, dict):
            return {
                (self.text(key) if isinstance(key, str) else key): self.value(item, depth + 1)
                for key, item in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [self.value(item, depth + 1) for item in value]
        return value


#: The process's secret values.
SECRET_VALUES = SecretValues()
