"""
The building blocks of the configuration schema: C{${VAR|default}}
substitution and the readers that turn one JSON value into a typed one.

A reader takes C{(value, path, environ)} and returns the typed value, or
raises L{ConfigError} naming the key path (e.g. C{services.todo.command[0]}).
A value's type comes from its reader, never from its looks: after
substitution C{"${MCP_PORT|8080}"} read by L{integer} is the integer 8080,
while a digit-only password read by L{string} stays a string.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "CHILD_DIR",
    "ConfigError",
    "Reader",
    "boolean",
    "integer",
    "kind",
    "non_negative",
    "number",
    "port",
    "positive",
    "section",
    "string",
    "string_list",
    "string_map",
    "substitute",
]

_VARIABLE = re.compile(r"\$\{([^}|]*)(?:\|([^}]*))?\}")

#: Left in place by L{substitute}: filled in when a child starts (the
#: child's private directory, for a service's C{env} values).
CHILD_DIR = "${MCPGATEWAY_CHILD_DIR}"

#: C{(value, path, environ) -> typed value}, raising L{ConfigError}.
Reader = Callable[[Any, str, Mapping[str, str]], Any]


class ConfigError(Exception):
    """
    The configuration cannot be used; the message names the key path.
    """


def substitute(text: str, environ: Mapping[str, str]) -> str:
    """
    Replace every C{${VAR}} and C{${VAR|default}} in C{text}.

    An unset variable without a default becomes the empty string.
    L{CHILD_DIR} stays as it is (the sandbox fills it in per child).

    @param text: A string value from the configuration file.
    @param environ: The environment to read variables from.
    @return: The substituted string.
    """

    def one(match: re.Match[str]) -> str:
        if match.group(0) == CHILD_DIR:
            return CHILD_DIR
        value = environ.get(match.group(1).strip())
        if value is None:
            return match.group(2) or ""
        return value

    return _VARIABLE.sub(one, text)


def string(value: Any, path: str, environ: Mapping[str, str]) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: expected a string, got {kind(value)}")
    return substitute(value, environ)


def integer(value: Any, path: str, environ: Mapping[str, str]) -> int:
    if isinstance(value, str):
        text = substitute(value, environ).strip()
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ConfigError(f"{path}: expected an integer, got {text!r}")
        return int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}: expected an integer, got {kind(value)}")
    return value


def port(value: Any, path: str, environ: Mapping[str, str]) -> int:
    port = integer(value, path, environ)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{path}: not a TCP port: {port}")
    return port


def number(value: Any, path: str, environ: Mapping[str, str]) -> float:
    if isinstance(value, str):
        text = substitute(value, environ).strip()
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(f"{path}: expected a number, got {text!r}") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{path}: expected a number, got {kind(value)}")
    else:
        number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise ConfigError(f"{path}: expected a finite number")
    return number


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def boolean(value: Any, path: str, environ: Mapping[str, str]) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = substitute(value, environ).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ConfigError(f"{path}: expected true or false, got {value!r}")


def string_list(value: Any, path: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    if isinstance(value, str):
        # The seeds allow one limit string where a list is expected.
        return (string(value, path, environ),)
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list of strings, got {kind(value)}")
    return tuple(string(item, f"{path}[{i}]", environ) for i, item in enumerate(value))


def string_map(value: Any, path: str, environ: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected an object of strings, got {kind(value)}")
    return {key: string(item, f"{path}.{key}", environ) for key, item in value.items()}


def positive(reader: Reader) -> Reader:
    def check(value: Any, path: str, environ: Mapping[str, str]) -> Any:
        result = reader(value, path, environ)
        if result <= 0:
            raise ConfigError(f"{path}: must be greater than zero, got {result}")
        return result

    return check


def non_negative(reader: Reader) -> Reader:
    def check(value: Any, path: str, environ: Mapping[str, str]) -> Any:
        result = reader(value, path, environ)
        if result < 0:
            raise ConfigError(f"{path}: must not be negative, got {result}")
        return result

    return check


def kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def section(
    raw: Any,
    path: str,
    environ: Mapping[str, str],
    readers: Mapping[str, Reader],
    aliases: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """
    Read one JSON object against C{readers}, refusing unknown keys.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected an object, got {kind(raw)}")
    result: dict[str, Any] = {}
    for key, value in raw.items():
        name = (aliases or {}).get(key, key)
        reader = readers.get(name)
        where = f"{path}.{key}" if path else key
        if reader is None:
            known = ", ".join(sorted(readers))
            raise ConfigError(f"{where}: unknown key (known keys: {known})")
        if name in result:
            raise ConfigError(f"{where}: given twice (also as {name!r})")
        result[name] = reader(value, where, environ)
    return result
