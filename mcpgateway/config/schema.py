"""
Configuration: the seeds' JSON format, read against a schema.

A value's type comes from the schema, never from its looks: after
C{${VAR|default}} substitution C{"port": "${MCP_PORT|8080}"} becomes the
integer 8080 because C{port} is an integer, while a digit-only password stays
the string it was written as.  Every problem is reported as one
L{ConfigError} naming the key path, e.g. C{services.todo.command[0]}.

Here are the whole document (L{GatewayConfig}), its small sections
(C{session}, C{rate_limiting}, C{logging}), the checks that span sections,
and reading and loading (L{parse_config}, L{load_config}); each larger
section is read by its own module (L{mcpgateway.config.server},
L{mcpgateway.config.services}, L{mcpgateway.config.audit}, ...).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mcpgateway.config.audit import AuditConfig, audit_from_config
from mcpgateway.config.cluster import ClusterConfig, cluster_from_config
from mcpgateway.config.governance import (
    BudgetsConfig,
    PolicyConfig,
    budgets_from_config,
    check_service_names,
    tool_policy_from_config,
)
from mcpgateway.config.secrets import SecretSources, secrets_from_config
from mcpgateway.config.server import ServerConfig, server_from_config
from mcpgateway.config.services import ServiceConfig, services_from_config
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

__all__ = [
    "GatewayConfig",
    "LoggingConfig",
    "RateLimitConfig",
    "SessionConfig",
    "load_config",
    "parse_config",
]


@dataclass(frozen=True)
class SessionConfig:
    """
    The C{session} section: idle timeouts, limits and the reaper.
    """

    default_timeout: float = 300.0
    max_sessions_per_service: int = 100
    max_total_sessions: int = 1000
    cleanup_interval: float = 60.0
    sandbox_dir: str = "./sandbox"
    #: On SIGTERM or C{POST /admin/drain}: how long live sessions may go on
    #: before their children are closed (0: at once).
    drain_timeout: float = 30.0


@dataclass(frozen=True)
class RateLimitConfig:
    """
    The seeds' C{rate_limiting} section, enforced by L{mcpgateway.policy.ratelimit}.

    The defaults are sized for a voice agent: one principal carries every
    live phone call of an agent deployment, each conversation turn may call
    several tools, and a 429 in the middle of a call is a caller hearing
    silence.  They stop a runaway loop or a stolen credential, not normal peaks.
    """

    enabled: bool = True
    #: listings, metrics, and any group without its own limit (100/s)
    default_limits: tuple[str, ...] = ("6000 per minute",)
    #: tool discovery, about once per conversation (10 new conversations/s)
    tools_limit: str = "600 per minute"
    #: tool calls, e.g. 100 concurrent calls each calling a tool every 5 s (20/s)
    call_limit: str = "1200 per minute"
    #: one per ended conversation
    session_delete_limit: str = "600 per minute"
    #: wrong or missing credentials, per client address and per Basic user name (password guessing)
    auth_failure_limit: str = "20 per minute"
    storage_uri: str = "memory://"


@dataclass(frozen=True)
class LoggingConfig:
    """
    The C{logging} section.
    """

    level: str = "INFO"
    file: str = ""
    security_file: str = ""
    http_access: bool = False
    access_log: str = "log"


@dataclass(frozen=True)
class GatewayConfig:
    """
    The whole configuration.
    """

    server: ServerConfig = field(default_factory=ServerConfig)
    services: Mapping[str, ServiceConfig] = field(default_factory=dict)
    session: SessionConfig = field(default_factory=SessionConfig)
    rate_limiting: RateLimitConfig = field(default_factory=RateLimitConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    #: L{None}: no per-tool policy (every principal may see and call every tool).
    policy: PolicyConfig | None = None
    budgets: BudgetsConfig = field(default_factory=BudgetsConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    #: Where per-principal credentials come from, or L{None}.
    secrets: SecretSources | None = None
    #: Several processes serving one session space (L{mcpgateway.cluster}).
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def _level(value: Any, path: str, environ: Mapping[str, str]) -> str:
    level = string(value, path, environ).upper()
    if level not in {"DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL"}:
        raise ConfigError(f"{path}: unknown log level {level!r}")
    return level


_SESSION: dict[str, Reader] = {
    "default_timeout": positive(number),
    "max_sessions_per_service": positive(integer),
    "max_total_sessions": positive(integer),
    "cleanup_interval": positive(number),
    "sandbox_dir": string,
    "drain_timeout": non_negative(number),
}

_RATE_LIMITING: dict[str, Reader] = {
    "enabled": boolean,
    "default_limits": string_list,
    "tools_limit": string,
    "call_limit": string,
    "session_delete_limit": string,
    "auth_failure_limit": string,
    "storage_uri": string,
}

_LOGGING: dict[str, Reader] = {
    "level": _level,
    "file": string,
    "security_file": string,
    "http_access": boolean,
    "access_log": string,
}


def parse_config(raw: Any, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """
    Turn the decoded JSON document into a L{GatewayConfig}.

    @param raw: The decoded JSON document.
    @param environ: Variables for C{${VAR|default}}; C{os.environ} if L{None}.
        C{MCPGATEWAY_PYTHON} defaults to the gateway's own interpreter.
    @return: The typed configuration.
    @raise ConfigError: Naming the first key path that is wrong.
    """
    env: Mapping[str, str] = {"MCPGATEWAY_PYTHON": sys.executable, **(os.environ if environ is None else environ)}
    if not isinstance(raw, dict):
        raise ConfigError(f"the configuration must be a JSON object, got {kind(raw)}")
    sections: dict[str, Reader] = {
        "server": server_from_config,
        "services": lambda v, p, e: v,  # read below, per service
        "session": lambda v, p, e: SessionConfig(**section(v, p, e, _SESSION)),
        "rate_limiting": lambda v, p, e: RateLimitConfig(**section(v, p, e, _RATE_LIMITING)),
        "logging": lambda v, p, e: LoggingConfig(**section(v, p, e, _LOGGING)),
        "audit": audit_from_config,
        "mcpServers": lambda v, p, e: v,  # read below, into services
        "policy": tool_policy_from_config,
        "budgets": budgets_from_config,
        "cluster": cluster_from_config,
        "secrets": secrets_from_config,
    }
    top = section(raw, "", env, sections)
    services = services_from_config(top.pop("services", {}), top.pop("mcpServers", {}), env)
    check_service_names(top.get("policy"), top.get("budgets", BudgetsConfig()), services)
    if "secrets" not in top:
        for service in services.values():
            if service.credentials is not None:
                raise ConfigError(f"services.{service.name}.credentials: there is no secrets section to take them from")
    config = GatewayConfig(services=services, **top)
    if config.server.workers > 1 and not config.cluster.enabled:
        raise ConfigError(
            f"server.workers: {config.server.workers} workers share their sessions through Redis: "
            "set cluster.redis (and cluster.secret)"
        )
    if config.cluster.enabled and config.cluster.entry_ttl <= config.session.cleanup_interval:
        raise ConfigError(
            f"cluster.entry_ttl: {config.cluster.entry_ttl:g} s must exceed session.cleanup_interval "
            f"({config.session.cleanup_interval:g} s), which refreshes the entries"
        )
    return config


def load_config(path: str, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """
    Read and check the configuration file at C{path}.

    Nothing is ever written on the user's behalf: a missing file is an error.

    @param path: The JSON file.
    @param environ: Variables for substitution; C{os.environ} if L{None}.
    @return: The typed configuration.
    @raise ConfigError: With one line saying what is wrong and where.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the configuration file: {error.strerror}") from None
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON: {error}") from None
    try:
        return parse_config(raw, environ)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
