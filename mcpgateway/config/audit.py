"""
The C{audit} section: whether and where each tool call is recorded
(L{mcpgateway.observe.audit}), for how long, and which arguments are never
stored (L{DEFAULT_REDACT_KEYS}, C{redact_keys} and the per-tool C{redact}
rules).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mcpgateway.config.values import (
    ConfigError,
    Reader,
    boolean,
    integer,
    kind,
    non_negative,
    number,
    positive,
    section,
    string,
    string_list,
)

__all__ = ["DEFAULT_REDACT_KEYS", "AuditConfig", "audit_from_config"]

#: Argument keys whose values the audit log never stores: case-insensitive
#: globs matched against every key, at any depth.
DEFAULT_REDACT_KEYS = (
    "*password*",
    "*passwd*",
    "*passphrase*",
    "*secret*",
    "*token",
    "*apikey*",
    "*api_key*",
    "*api-key*",
    "*privatekey*",
    "*private_key*",
    "*credential*",
    "*authorization*",
    "*cookie*",
    "key",
)


@dataclass(frozen=True)
class AuditConfig:
    """
    The C{audit} section: one record per tool call (L{mcpgateway.observe.audit}).
    """

    enabled: bool = True
    #: C{sqlite:PATH} or C{postgresql://...}; C{""} is C{<server.state_dir>/audit.sqlite3}.
    storage: str = ""
    retain_days: float = 30.0
    prune_interval: float = 3600.0
    redact_keys: tuple[str, ...] = DEFAULT_REDACT_KEYS
    #: C{"service/tool"} glob -> argument paths (dotted, each part a glob) never stored.
    redact: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Service name globs whose results are stored (capped at C{max_result_bytes}).
    results: tuple[str, ...] = ()
    max_argument_bytes: int = 16384
    max_result_bytes: int = 4096
    queue_size: int = 10000
    flush_interval: float = 0.2


def _storage(value: Any, path: str, environ: Mapping[str, str]) -> str:
    storage = string(value, path, environ).strip()
    if storage == "" or storage.startswith(("postgresql://", "postgres://")):
        return storage
    if storage.startswith("sqlite:") and len(storage) > len("sqlite:"):
        return storage
    raise ConfigError(f"{path}: expected sqlite:PATH or postgresql://user@host/db, got {storage!r}")


def _redact(value: Any, path: str, environ: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise ConfigError(f'{path}: expected an object of "service/tool": [argument paths], got {kind(value)}')
    rules: dict[str, tuple[str, ...]] = {}
    for key, paths in value.items():
        where = f"{path}.{key}"
        service, slash, tool = key.partition("/")
        if not (service and slash and tool) or "/" in tool:
            raise ConfigError(f'{where}: a rule\'s key is "service/tool" (globs allowed, e.g. "github/*")')
        fields = string_list(paths, where, environ)
        if any(not item or "" in item.split(".") for item in fields):
            raise ConfigError(f"{where}: an argument path is names joined by dots (globs allowed), e.g. auth.token")
        rules[key] = fields
    return rules


_AUDIT: dict[str, Reader] = {
    "enabled": boolean,
    "storage": _storage,
    "retain_days": non_negative(number),
    "prune_interval": positive(number),
    "redact_keys": string_list,
    "redact": _redact,
    "results": string_list,
    "max_argument_bytes": positive(integer),
    "max_result_bytes": positive(integer),
    "queue_size": positive(integer),
    "flush_interval": positive(number),
}


def audit_from_config(value: Any, path: str, environ: Mapping[str, str]) -> AuditConfig:
    """
    Read the C{audit} section.

    @raise ConfigError: Naming the first key path that is wrong.
    """
    return AuditConfig(**section(value, path, environ, _AUDIT))
