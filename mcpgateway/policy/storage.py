"""
Where rate-limit counters live: C{memory://} (L{InlineMemoryStorage}, on the
reactor thread) or C{redis://}, C{rediss://}, C{redis+unix://} (limits'
C{RedisStorage} with short socket timeouts, always called through
C{deferToThread} by L{mcpgateway.policy.ratelimit.RateLimiter}).
"""

from __future__ import annotations

import math
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from limits.errors import ConfigurationError
from limits.storage import RedisStorage, Storage

from mcpgateway.config import ConfigError

__all__ = [
    "REDIS_KEY_PREFIX",
    "REDIS_SOCKET_TIMEOUT",
    "InlineMemoryStorage",
    "make_storage",
    "redact",
    "uri_hit_timeout",
]

#: Redis connect and read timeout, seconds (Redis answers in well under a millisecond).
REDIS_SOCKET_TIMEOUT = 0.5
#: Prefix of every Redis key.
REDIS_KEY_PREFIX = "mcpgateway"

_MEMORY_SCHEMES = ("memory",)
_REDIS_SCHEMES = ("redis", "rediss", "redis+unix")


def redact(uri: str) -> str:
    """
    @return: C{uri} without its password, for messages.
    """
    try:
        parts = urlsplit(uri)
        if parts.password is None:
            return uri
        host = parts.netloc.rsplit("@", 1)[1]
        user = f"{parts.username}:***@" if parts.username else ":***@"
        return urlunsplit(parts._replace(netloc=user + host))
    except ValueError:
        return "<unparsable URI>"


class InlineMemoryStorage(Storage):
    """
    Fixed-window counters in a dict, for use on the reactor thread only.

    limits' own C{MemoryStorage} expires keys from a C{threading.Timer} it
    starts again every 10 ms under load, and guards each key with a lock: on
    the gateway's hot path that cost more than the rest of the call (profiled:
    a thread start per few requests and the GIL traffic that comes with it).
    Here keys expire lazily when read, and expired keys are swept whenever the
    dict has doubled since the last sweep.  No thread, no lock.
    """

    STORAGE_SCHEME = ["mcpgateway-inline-memory"]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: str) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._counts: dict[str, list[float]] = {}
        self._sweep_at = 1024

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def _live(self, key: str, now: float) -> list[float] | None:
        entry = self._counts.get(key)
        if entry is not None and entry[1] <= now:
            del self._counts[key]
            return None
        return entry

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = time.time()
        entry = self._live(key, now)
        if entry is None:
            if len(self._counts) >= self._sweep_at:
                self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
                self._sweep_at = max(1024, 2 * len(self._counts))
            entry = self._counts[key] = [0, now + expiry]
        entry[0] += amount
        return int(entry[0])

    def get(self, key: str) -> int:
        entry = self._live(key, time.time())
        return 0 if entry is None else int(entry[0])

    def get_expiry(self, key: str) -> float:
        now = time.time()
        entry = self._live(key, now)
        return now if entry is None else entry[1]

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        count = len(self._counts)
        self._counts.clear()
        return count

    def clear(self, key: str) -> None:
        self._counts.pop(key, None)


def uri_hit_timeout(uri: str) -> float:
    """
    @return: The longest a hit may take with the socket timeouts the URI's
        query sets (connect, then a command and its one retry), or 0 when
        it sets none.
    """
    try:
        query = parse_qs(urlsplit(uri).query)
        if "socket_timeout" not in query and "socket_connect_timeout" not in query:
            return 0.0
        connect = float(query.get("socket_connect_timeout", [REDIS_SOCKET_TIMEOUT])[0])
        command = float(query.get("socket_timeout", [REDIS_SOCKET_TIMEOUT])[0])
    except ValueError:
        return 0.0
    total = connect + 2 * command
    return total if math.isfinite(total) else 0.0


def make_storage(uri: str) -> Storage:
    """
    @return: The storage for C{uri}, not yet connected.
    @raise ConfigError: If C{uri} is not a supported storage.
    """
    shown = redact(uri)
    try:
        scheme = urlsplit(uri).scheme
    except ValueError:
        scheme = ""
    if scheme in _MEMORY_SCHEMES:
        return InlineMemoryStorage()
    if scheme not in _REDIS_SCHEMES:
        supported = ", ".join(f"{name}://" for name in (*_MEMORY_SCHEMES, *_REDIS_SCHEMES))
        raise ConfigError(f"rate_limiting.storage_uri: unsupported storage {shown!r} (supported: {supported})")
    try:
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        raise ConfigError(f"rate_limiting.storage_uri: {shown} needs the redis package (pip install redis)") from None
    options: dict[str, Any] = {
        "socket_timeout": REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": REDIS_SOCKET_TIMEOUT,
        "retry": Retry(NoBackoff(), 1),
    }
    try:
        return RedisStorage(uri, key_prefix=REDIS_KEY_PREFIX, **options)
    except ConfigurationError as error:
        raise ConfigError(f"rate_limiting.storage_uri: {shown}: {error}") from None
    except (ValueError, TypeError) as error:
        raise ConfigError(f"rate_limiting.storage_uri: cannot use {shown!r}: {error}") from None
