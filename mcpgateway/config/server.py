"""
The C{server} section: where the gateway listens, how large and how slow a
request may be, and who may call it (C{auth_*}, C{principals},
C{issuers}).

Its C{issuers} are read by L{mcpgateway.config.issuers}, its C{workers} by
L{mcpgateway.config.cluster}.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mcpgateway.config.cluster import workers_from_config
from mcpgateway.config.issuers import IssuerConfig, issuers_from_config, public_url
from mcpgateway.config.values import (
    ConfigError,
    Reader,
    integer,
    kind,
    number,
    port,
    positive,
    section,
    string,
    string_list,
)
from mcpgateway.names import PRINCIPAL_NAME

__all__ = ["PrincipalConfig", "ServerConfig", "server_from_config"]


@dataclass(frozen=True)
class PrincipalConfig:
    """
    One entry of C{server.principals}: a caller with a role and a hashed credential.
    """

    name: str
    role: str = "agent"
    password_hash: str = ""
    token_hash: str = ""


@dataclass(frozen=True)
class ServerConfig:
    """
    The C{server} section: where to listen and who may call.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    auth_user: str = ""
    auth_password: str = ""
    auth_token: str = ""
    max_body_bytes: int = 10 * 1024 * 1024
    tls_cert: str = ""
    idle_timeout: float = 60.0
    request_timeout: float = 30.0
    max_header_bytes: int = 16384
    metrics_listen: str = ""
    principals: tuple[PrincipalConfig, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    state_dir: str = "./state"
    #: JWT issuers (L{mcpgateway.config.issuers}).
    issuers: tuple[IssuerConfig, ...] = ()
    #: C{https://host[:port]} the clients reach the gateway at, or C{""}: from each request.
    public_url: str = ""
    #: Processes serving the port (L{mcpgateway.cluster.workers}); more than 1 needs C{cluster.redis}.
    workers: int = 1


_PRINCIPAL: dict[str, Reader] = {
    "name": string,
    "role": string,
    "password_hash": string,
    "token_hash": string,
}


def _principals(value: Any, path: str, environ: Mapping[str, str]) -> tuple[PrincipalConfig, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list of principals, got {kind(value)}")
    result: list[PrincipalConfig] = []
    names: set[str] = set()
    for index, raw in enumerate(value):
        where = f"{path}[{index}]"
        entry = PrincipalConfig(**{"name": "", **section(raw, where, environ, _PRINCIPAL)})
        if not PRINCIPAL_NAME.fullmatch(entry.name):
            raise ConfigError(f"{where}.name: 1-128 of A-Z a-z 0-9 _ . @ -")
        if entry.name in names:
            raise ConfigError(f"{where}.name: {entry.name!r} is given twice")
        names.add(entry.name)
        if entry.role not in ("admin", "agent"):
            raise ConfigError(f"{where}.role: expected admin or agent, got {entry.role!r}")
        if not entry.password_hash and not entry.token_hash:
            raise ConfigError(f"{where}: give password_hash and/or token_hash")
        if entry.password_hash and not re.fullmatch(
            r"scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+", entry.password_hash
        ):
            raise ConfigError(
                f"{where}.password_hash: expected scrypt$n$r$p$salt$hash (python -m mcpgateway.auth password)"
            )
        if entry.token_hash and not re.fullmatch(r"sha256\$[0-9a-f]{64}", entry.token_hash):
            raise ConfigError(f"{where}.token_hash: expected sha256$<64 hex digits> (python -m mcpgateway.auth token)")
        result.append(entry)
    return tuple(result)


_SERVER: dict[str, Reader] = {
    "host": string,
    "port": port,
    "auth_user": string,
    "auth_password": string,
    "auth_token": string,
    "max_body_bytes": positive(integer),
    "tls_cert": string,
    "idle_timeout": positive(number),
    "request_timeout": positive(number),
    "max_header_bytes": positive(integer),
    "metrics_listen": string,
    "principals": _principals,
    "allowed_origins": string_list,
    "state_dir": string,
    "issuers": issuers_from_config,
    "public_url": public_url,
    "workers": workers_from_config,
}


def server_from_config(value: Any, path: str, environ: Mapping[str, str]) -> ServerConfig:
    """
    Read the C{server} section.

    @raise ConfigError: Naming the first key path that is wrong.
    """
    return ServerConfig(**section(value, path, environ, _SERVER))
