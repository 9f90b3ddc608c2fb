"""
Where fixed-window counters live, and how they are reached without blocking
the reactor: the rate limits (L{mcpgateway.policy.ratelimit}) and the budgets
(L{mcpgateway.policy.budgets}) both count through L{Counters}.

  - C{memory://}: L{InlineMemoryStorage}, a dict on the reactor thread;
  - C{redis://}, C{rediss://}, C{redis+unix://}: limits' C{RedisStorage}
    with short socket timeouts, always called through C{deferToThread}.

When the shared storage fails
=============================

A failing storage (Redis down, unreachable, too slow) never turns into an
error response or a hang.  L{Counters} I{fails open to per-process
counting}: the work is done on an in-memory storage of this process (so the
same limits apply per process: with N gateways up to N times the amount), a
warning is logged (again at most every L{WARNING_INTERVAL} seconds while it
lasts), and the shared storage is tried again after L{STORAGE_RETRY_INTERVAL}
seconds (one probe at a time; meanwhile no thread is spent on it).  Its
recovery is logged.  Each Redis operation is bounded by
L{REDIS_SOCKET_TIMEOUT} (connect and read; one immediate retry for a stale
pooled connection) and a whole piece of work by L{HIT_TIMEOUT}.  Query
parameters of the URI (e.g. C{?socket_timeout=2}) take precedence over these
defaults, and the work may then take as long as they allow.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

from limits.errors import ConfigurationError
from limits.storage import RedisStorage, Storage
from limits.strategies import FixedWindowRateLimiter
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpgateway.config import ConfigError

__all__ = [
    "HIT_TIMEOUT",
    "REDIS_KEY_PREFIX",
    "REDIS_SOCKET_TIMEOUT",
    "STORAGE_RETRY_INTERVAL",
    "WARNING_INTERVAL",
    "Counters",
    "InlineMemoryStorage",
    "close_storage",
    "escape_key",
    "make_storage",
    "redact",
    "uri_hit_timeout",
]

T = TypeVar("T")

#: The longest a piece of work on the shared storage may take before it is done in this process instead, seconds.
HIT_TIMEOUT = 2.0
#: After a storage failure, how long to count in this process before trying it again, seconds.
STORAGE_RETRY_INTERVAL = 5.0
#: While the storage keeps failing, how often to repeat the warning, seconds.
WARNING_INTERVAL = 60.0

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


def escape_key(key: str) -> str:
    """
    @return: C{key} with C{/} (the separator of counter names) escaped.
    """
    return key.replace("%", "%25").replace("/", "%2F")


def make_storage(uri: str, key: str = "rate_limiting.storage_uri") -> Storage:
    """
    @param uri: The storage URI.
    @param key: Its configuration key, for errors.
    @return: The storage for C{uri}, not yet connected.
    @raise ConfigError: Naming C{key} if C{uri} is not a supported storage.
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
        raise ConfigError(f"{key}: unsupported storage {shown!r} (supported: {supported})")
    try:
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        raise ConfigError(f"{key}: {shown} needs the redis package (pip install redis)") from None
    options: dict[str, Any] = {
        "socket_timeout": REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": REDIS_SOCKET_TIMEOUT,
        "retry": Retry(NoBackoff(), 1),
    }
    try:
        return RedisStorage(uri, key_prefix=REDIS_KEY_PREFIX, **options)
    except ConfigurationError as error:
        raise ConfigError(f"{key}: {shown}: {error}") from None
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{key}: cannot use {shown!r}: {error}") from None


class _Abandoned(Exception):
    """
    The work timed out before its thread started; the storage was not touched.
    """


class _Flag:
    """
    Set on the reactor when a piece of work is given up, read by its thread.
    """

    given_up = False


class Counters:
    """
    Fixed-window counters in one storage, reached without blocking the
    reactor, failing open to this process (see the module's docstring).

    Work is a function of a C{FixedWindowRateLimiter}: L{run} calls it inline
    on a memory storage, in a thread on a shared one, and on this process's
    fallback storage while the shared one fails.
    """

    def __init__(
        self,
        uri: str,
        key: str,
        log: Logger,
        *,
        what: str = "rate-limit",
        clock: IReactorTime | None = None,
        retry_interval: float = STORAGE_RETRY_INTERVAL,
        hit_timeout: float = HIT_TIMEOUT,
    ) -> None:
        """
        Check the URI and prepare the storage (nothing is connected yet: a
        Redis that is down at start-up is handled like one that goes down later).

        @param uri: The storage URI.
        @param key: Its configuration key, for errors.
        @param log: Where the storage's failures and recovery are logged.
        @param what: What is counted, for those messages (C{"rate-limit"}, C{"budget"}).
        @param clock: Times the shared storage's work and retries; the
            global reactor if L{None}.
        @param retry_interval: After a storage failure, seconds before it is tried again.
        @param hit_timeout: Seconds after which work on the shared storage
            is done in this process instead.
        @raise ConfigError: Naming C{key} if C{uri} is not a supported storage.
        """
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self._clock: IReactorTime = clock
        self._log = log
        self._what = what
        self.shown = redact(uri)
        self._retry_interval = retry_interval
        self._hit_timeout = max(hit_timeout, uri_hit_timeout(uri))
        storage = make_storage(uri, key)
        self._storages: list[Storage] = [storage]
        #: Counts in the configured storage.
        self.primary = FixedWindowRateLimiter(storage)
        self._fallback: FixedWindowRateLimiter | None = None
        if not isinstance(storage, InlineMemoryStorage):
            fallback = InlineMemoryStorage()
            self._storages.append(fallback)
            self._fallback = FixedWindowRateLimiter(fallback)
        self._down = False
        self._probing = False
        self._retry_at = 0.0
        self._last_warning = -math.inf

    @property
    def shared(self) -> bool:
        """
        Whether the counts are shared between processes (a non-memory storage).
        """
        return self._fallback is not None

    @property
    def down(self) -> bool:
        """
        Whether the shared storage failed last time and counts are per process meanwhile.
        """
        return self._down

    def run(self, work: Callable[[FixedWindowRateLimiter], T]) -> Deferred[T]:
        """
        Do C{work} on the counters.

        @param work: Reads and counts; blocking on a shared storage, so it
            runs in a thread there.
        @return: Fires with what C{work} gave; never fails because of the
            storage (C{work} is then done again on this process's counters).
        """
        fallback = self._fallback
        if fallback is None:  # memory: a dict, counted inline
            return succeed(work(self.primary))
        if self._down and (self._probing or self._clock.seconds() < self._retry_at):
            return succeed(work(fallback))
        probe = self._down  # the first try after a failure: the only one until it answers
        if probe:
            self._probing = True
        flag = _Flag()
        primary = self.primary

        def remote() -> T:
            if flag.given_up:
                raise _Abandoned("given up before it started")
            return work(primary)

        def succeeded(result: T) -> T:
            if probe:
                self._probing = False
            if self._down:
                self._down = False
                self._log.info(
                    "{what} storage {storage} is back; counts are shared again", what=self._what, storage=self.shown
                )
            return result

        def failed(failure: Failure) -> T:
            flag.given_up = True
            if probe:
                self._probing = False
            self._failed(failure)
            return work(fallback)

        result = deferToThread(remote)
        result.addTimeout(self._hit_timeout, self._clock)
        return result.addCallbacks(succeeded, failed)

    def close(self) -> None:
        """
        Disconnect from the storage (call when the gateway stops).
        """
        for storage in self._storages:
            close_storage(storage)
        self._storages = []

    def _failed(self, failure: Failure) -> None:
        now = self._clock.seconds()
        self._retry_at = now + self._retry_interval
        if not self._down or now - self._last_warning >= WARNING_INTERVAL:
            self._last_warning = now
            self._log.warn(
                "{what} storage {storage} failed ({error}); counting in this process only "
                "(each gateway process allows the full amount) and retrying in {retry:g} s",
                what=self._what,
                storage=self.shown,
                error=f"{type(failure.value).__name__}: {failure.value}",
                retry=self._retry_interval,
            )
        self._down = True


def close_storage(storage: Storage) -> None:
    """
    Disconnect C{storage} if it holds connections (a Redis client and its pool).
    """
    if isinstance(storage, RedisStorage):
        storage.storage.close()
