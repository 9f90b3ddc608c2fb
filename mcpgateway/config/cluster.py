"""
The C{cluster} section and C{server.workers}: several gateway processes
(workers on one host, gateways on several) serving one session space, with
the session directory in Redis (L{mcpgateway.cluster}).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mcpgateway.config.values import ConfigError, Reader, integer, number, port, positive, section, string

__all__ = ["MIN_SECRET_LENGTH", "ClusterConfig", "cluster_from_config", "workers_from_config"]

#: A shared secret shorter than this is refused: it authenticates forwarded calls.
MIN_SECRET_LENGTH = 16


@dataclass(frozen=True)
class ClusterConfig:
    """
    The C{cluster} section.

    @ivar redis: The directory's C{redis://} (or C{rediss://}) URI; C{""}: no cluster.
    @ivar secret: The secret gateways present to each other (from C{secret}
        or C{secret_file}).
    @ivar internal_host: The address the internal listener binds to.
    @ivar internal_port: Its port (worker I{i} adds I{i}); 0: any free port.
    @ivar advertise_host: The host other gateways reach the internal listener
        at (C{internal_host} if C{""}).
    @ivar entry_ttl: Seconds a directory entry lives unless refreshed.
    @ivar connect_timeout: Seconds to reach an owner before its session is lost.
    @ivar key_prefix: The prefix of every Redis key.
    """

    redis: str = ""
    secret: str = ""
    internal_host: str = "127.0.0.1"
    internal_port: int = 0
    advertise_host: str = ""
    entry_ttl: float = 180.0
    connect_timeout: float = 2.0
    key_prefix: str = "mcpgateway:"

    @property
    def enabled(self) -> bool:
        """
        @return: Whether a directory is configured.
        """
        return bool(self.redis)


def _redis_uri(value: Any, path: str, environ: Mapping[str, str]) -> str:
    uri = string(value, path, environ).strip()
    if uri and not uri.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{path}: expected redis://host:port/db, rediss://... or unix://PATH, got {uri!r}")
    return uri


_CLUSTER: dict[str, Reader] = {
    "redis": _redis_uri,
    "secret": string,
    "secret_file": string,
    "internal_host": string,
    "internal_port": port,
    "advertise_host": string,
    "entry_ttl": positive(number),
    "connect_timeout": positive(number),
    "key_prefix": string,
}


def cluster_from_config(value: Any, path: str, environ: Mapping[str, str]) -> ClusterConfig:
    """
    Read the C{cluster} section.

    @raise ConfigError: Naming the key that is wrong: no secret (or a short
        one) with a directory, both C{secret} and C{secret_file}, an
        unreadable C{secret_file}.
    """
    values = section(value, path, environ, _CLUSTER)
    secret_file = values.pop("secret_file", "")
    if secret_file:
        if values.get("secret"):
            raise ConfigError(f"{path}: give secret or secret_file, not both")
        try:
            with open(secret_file, encoding="utf-8") as handle:
                values["secret"] = handle.read().strip()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise ConfigError(f"{path}.secret_file: cannot read {secret_file}: {reason}") from None
    config = ClusterConfig(**values)
    if config.redis and len(config.secret) < MIN_SECRET_LENGTH:
        where = f"{path}.secret_file" if secret_file else f"{path}.secret"
        raise ConfigError(
            f"{where}: the gateways' shared secret must be at least {MIN_SECRET_LENGTH} characters "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    if not config.key_prefix:
        raise ConfigError(f"{path}.key_prefix: must not be empty")
    return config


def workers_from_config(value: Any, path: str, environ: Mapping[str, str]) -> int:
    """
    Read C{server.workers}: a count from 1 to 64, or C{"auto"} (the cores this
    process may run on).
    """
    if isinstance(value, str) and string(value, path, environ).strip().lower() == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    try:
        count = integer(value, path, environ)
    except ConfigError:
        raise ConfigError(f'{path}: expected a number of processes or "auto", got {value!r}') from None
    if not 1 <= count <= 64:
        raise ConfigError(f'{path}: expected 1 to 64 processes or "auto", got {count}')
    return count
