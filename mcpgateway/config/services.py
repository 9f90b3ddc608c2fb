"""
The C{services} section and a top-level C{mcpServers} block: each entry an
MCP server started as a child process (C{command}) or reached over HTTP
(C{url}), read into a L{ServiceConfig}.

A command service may not have the keys of L{REMOTE_KEYS}, a url service
those of L{LOCAL_KEYS}.  C{mcpServers}, Claude Desktop's shape, is read by
L{mcpgateway.config.claude} into C{services} entries; a name given in both
is an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from mcpgateway.config.claude import convert_servers
from mcpgateway.config.sandbox import SandboxPolicy, policy_from_config
from mcpgateway.config.secrets import ServiceCredentials, credentials_from_config
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
    string_map,
)
from mcpgateway.names import SERVICE_NAME

__all__ = [
    "DOWNLOADERS",
    "DOWNLOAD_STARTUP_TIMEOUT",
    "LOCAL_KEYS",
    "REMOTE_KEYS",
    "ServiceConfig",
    "services_from_config",
]

#: Programs that may download the server on its first start (C{npx -y ...}, C{uvx ...}).
DOWNLOADERS = frozenset({"npx", "uvx", "uv", "pipx", "bunx", "pnpx", "pnpm", "yarn", "deno", "docker", "podman"})
#: Their default C{startup_timeout}, seconds.
DOWNLOAD_STARTUP_TIMEOUT = 120.0


@dataclass(frozen=True)
class ServiceConfig:
    """
    One C{services.<name>} entry: an MCP server started as a child process
    (C{command}), or one reached over HTTP (C{url}, its keys in
    L{REMOTE_KEYS}).
    """

    name: str
    command: tuple[str, ...] = ()
    #: C{http(s)://...}: a remote MCP server instead of a child (L{mcpgateway.children.remote}).
    url: str = ""
    #: C{auto}, C{streamable-http} or C{sse} (url services).
    transport: str = "auto"
    #: Headers sent with every request to C{url} (C{${VAR}} read at load).
    headers: Mapping[str, str] = field(default_factory=dict)
    #: A PEM bundle of the CAs trusted for an C{https} C{url}; C{""}: the system's.
    ca_file: str = ""
    #: The largest HTTP answer (or SSE event) read from C{url}.
    max_response_bytes: int = 128 * 1024 * 1024
    #: Idle keep-alive connections kept open to C{url}.
    max_connections: int = 8
    description: str = ""
    enabled: bool = True
    env: Mapping[str, str] = field(default_factory=dict)
    protocol: str = "auto"
    call_timeout: float = 25.0
    handshake_timeout: float = 30.0
    #: L{None}: 120 s for a launcher that downloads (L{DOWNLOADERS}), else C{handshake_timeout}.
    startup_timeout: float | None = None
    discover_timeout: float = 3.0
    max_line_bytes: int = 128 * 1024 * 1024
    close_grace: float = 2.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    backoff_reset: float = 30.0
    prewarm: int = 0
    stderr_tail: str = "admins"
    sandbox: SandboxPolicy = field(default_factory=SandboxPolicy)
    #: Per-principal credentials (L{mcpgateway.config.secrets}), or L{None}.
    credentials: ServiceCredentials | None = None

    def first_start_timeout(self) -> float:
        """
        @return: The handshake bound of the service's first start since the
            gateway started, which may have to download the server:
            C{startup_timeout} if given, else L{DOWNLOAD_STARTUP_TIMEOUT} for
            a command run by one of L{DOWNLOADERS}, else C{handshake_timeout}.
        """
        if self.startup_timeout is not None:
            return self.startup_timeout
        if self.command and os.path.basename(self.command[0]) in DOWNLOADERS:
            return max(self.handshake_timeout, DOWNLOAD_STARTUP_TIMEOUT)
        return self.handshake_timeout


def _protocol(value: Any, path: str, environ: Mapping[str, str]) -> str:
    era = string(value, path, environ)
    if era not in ("auto", "legacy", "modern"):
        raise ConfigError(f"{path}: expected auto, legacy or modern, got {era!r}")
    return era


def _stderr_tail(value: Any, path: str, environ: Mapping[str, str]) -> str:
    who = string(value, path, environ).strip().lower()
    if who not in ("admins", "all", "none"):
        raise ConfigError(f"{path}: expected admins, all or none, got {who!r}")
    return who


def _command(value: Any, path: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    command = string_list(value, path, environ) if isinstance(value, list) else None
    if not command or not command[0]:
        raise ConfigError(f"{path}: expected a non-empty list of strings (program and arguments)")
    return command


def _url(value: Any, path: str, environ: Mapping[str, str]) -> str:
    url = string(value, path, environ).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{path}: expected an http:// or https:// URL, got {url!r}")
    if parts.username or parts.password:
        raise ConfigError(f"{path}: put credentials in headers, not in the URL")
    if parts.fragment:
        raise ConfigError(f"{path}: a URL with a #fragment cannot be requested")
    return url


def _transport(value: Any, path: str, environ: Mapping[str, str]) -> str:
    transport = string(value, path, environ)
    if transport not in ("auto", "streamable-http", "sse"):
        raise ConfigError(f"{path}: expected auto, streamable-http or sse, got {transport!r}")
    return transport


def _headers(value: Any, path: str, environ: Mapping[str, str]) -> dict[str, str]:
    headers = string_map(value, path, environ)
    for name, text in headers.items():
        if not _TOKEN.fullmatch(name):
            raise ConfigError(f"{path}.{name}: not an HTTP header name")
        if name.lower() in _OWN_HEADERS:
            raise ConfigError(f"{path}.{name}: the gateway sets this header itself")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text) or not text.isascii():
            raise ConfigError(f"{path}.{name}: a header value is printable ASCII (no line breaks)")
    return headers


def _ca_file(value: Any, path: str, environ: Mapping[str, str]) -> str:
    name = string(value, path, environ)
    if not os.path.isfile(name):
        raise ConfigError(f"{path}: no such file: {name!r}")
    return name


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: Headers of the MCP transports, which the gateway writes itself.
_OWN_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "accept",
        "host",
        "connection",
        "transfer-encoding",
        "mcp-session-id",
        "mcp-protocol-version",
        "mcp-method",
        "mcp-name",
        "last-event-id",
    }
)
#: Keys only a url service may have.
REMOTE_KEYS = frozenset({"url", "transport", "headers", "ca_file", "max_response_bytes", "max_connections"})
#: Keys only a command service may have: a url service runs no process.
LOCAL_KEYS = frozenset({"command", "env", "sandbox", "startup_timeout", "max_line_bytes", "prewarm"})

_SERVICE: dict[str, Reader] = {
    "command": _command,
    "url": _url,
    "transport": _transport,
    "headers": _headers,
    "ca_file": _ca_file,
    "max_response_bytes": positive(integer),
    "max_connections": positive(integer),
    "description": string,
    "enabled": boolean,
    "env": string_map,
    "protocol": _protocol,
    "call_timeout": positive(number),
    "handshake_timeout": positive(number),
    "startup_timeout": positive(number),
    "discover_timeout": positive(number),
    "max_line_bytes": positive(integer),
    "close_grace": positive(number),
    "backoff_initial": positive(number),
    "backoff_max": positive(number),
    "backoff_reset": positive(number),
    "prewarm": non_negative(integer),
    "stderr_tail": _stderr_tail,
    "sandbox": policy_from_config,
    "credentials": credentials_from_config,
}


def _service(name: str, raw: Any, environ: Mapping[str, str]) -> ServiceConfig:
    path = f"services.{name}"
    if not SERVICE_NAME.fullmatch(name):
        raise ConfigError(f"{path}: a service name is 1-64 of A-Z a-z 0-9 _ -")
    values = section(raw, path, environ, _SERVICE, aliases={"sandbox_config": "sandbox"})
    if "command" in values and "url" in values:
        raise ConfigError(f"{path}: give command (a child process) or url (a remote server), not both")
    if "url" in values:
        for key in sorted(LOCAL_KEYS & set(values)):
            raise ConfigError(f"{path}.{key}: not for a url service (it runs no process on this host)")
    elif "command" in values:
        for key in sorted(REMOTE_KEYS & set(values)):
            raise ConfigError(f"{path}.{key}: only for a url service")
    else:
        raise ConfigError(f"{path}.command: missing (the program and its arguments), or give url")
    service = ServiceConfig(name=name, **values)
    if service.credentials is not None:
        if service.prewarm:
            raise ConfigError(
                f"{path}.prewarm: a warm child is started for nobody, so it cannot hold a "
                "per-principal credential; use 0 with credentials"
            )
        for mapping in service.credentials.mappings():
            if service.url and mapping.env:
                raise ConfigError(f"{mapping.path}.env: a url service runs no process; give its credential as headers")
            for variable in mapping.env:
                if variable in service.env:
                    raise ConfigError(f"{mapping.path}.env.{variable}: also set in {path}.env")
            for header in mapping.headers:
                if header.lower() in {name.lower() for name in service.headers}:
                    raise ConfigError(f"{mapping.path}.headers.{header}: also set in {path}.headers")
    return service


def _mcp_servers(raw: Any, services: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """
    Read a top-level C{mcpServers} block, Claude Desktop's shape, into raw
    C{services} entries (L{mcpgateway.config.claude}).

    @raise ConfigError: For a field that does not map, a remote server, or a
        name also given in C{services}.
    """
    entries = convert_servers(raw, "mcpServers", strict=True).services
    for name in entries:
        if name in services:
            raise ConfigError(f"mcpServers.{name}: also defined in services")
    return entries


def services_from_config(services: Any, mcp_servers: Any, environ: Mapping[str, str]) -> dict[str, ServiceConfig]:
    """
    Read the C{services} section and the top-level C{mcpServers} block
    together: they name the services of one gateway.

    @param services: The decoded C{services} section (C{{}} if absent).
    @param mcp_servers: The decoded C{mcpServers} block (C{{}} if absent).
    @param environ: Variables for C{${VAR|default}}.
    @return: Each service's configuration by name, those of C{services} first.
    @raise ConfigError: Naming the first key path that is wrong.
    """
    if not isinstance(services, dict):
        raise ConfigError(f"services: expected an object keyed by service name, got {kind(services)}")
    entries = {**services, **_mcp_servers(mcp_servers, services)}
    return {name: _service(name, value, environ) for name, value in entries.items()}
