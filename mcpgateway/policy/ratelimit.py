"""
Rate limits: the C{rate_limiting} section enforced with the C{limits} library
(the one flask-limiter uses), so the seeds' strings (C{"200 per day"},
C{"30 per minute"}, C{"10/second"}, C{"1/second; 50/hour"}) and storage URIs
(C{memory://}, C{redis://host:port/db}) mean what they mean there.

Groups and keys
===============

Every request is counted in one group, for one key built by the caller:

  - C{tools}: C{GET /services/<n>/tools}, per principal;
  - C{call}: C{POST /services/<n>/call}, per principal;
  - C{session_delete}: C{DELETE /sessions/<id>}, per principal;
  - C{default}: every other authenticated route, per principal;
  - C{mcp}: every request to C{/mcp} and C{/services/<n>/mcp}, per
    principal (C{default_limits});
  - C{auth_failure}: requests with missing or wrong credentials and password
    verifications, per client address (C{"addr:<ip>"}) and per Basic user
    name (C{"user:<name>"}, or C{"user-sha256:<hex>"} for a name no
    principal could have), so that password guessing is limited
    (L{mcpgateway.http.guard} says what it refuses and what it never does).

A group's limits are its own key (C{tools_limit}, C{call_limit},
C{session_delete_limit}, C{auth_failure_limit}) when that is not empty, and
C{default_limits} otherwise: as in flask-limiter, a group with its own limit
does B{not} also get the defaults.  A group whose limits end up empty is not
limited.  A limit string may hold several limits (C{"10/second; 600/minute"})
and C{default_limits} is a list of them; the request is refused as soon as one
is exhausted, and the headers describe the tightest.

A counter is named C{LIMITER/<group>/<key>/<amount>/<multiples>/<unit>} (in
Redis under the prefix C{mcpgateway:}), so groups and keys never share a
budget, and changing a limit starts a fresh counter.

Strategy
========

Fixed window (flask-limiter's default): one counter per limit, key and window,
starting at the first hit.  It is exact, costs one small Redis key per
principal and limit, and is the same on every storage; its known weakness, up
to twice the amount across a window boundary, does not matter for limits meant
to catch a runaway agent.  Limits are tried from the shortest window to the
longest and the first refusal stops counting, so requests refused by a
per-second limit do not eat a per-day budget.

Storage and the reactor
=======================

C{memory://} counts in this process, inline on the reactor (it is a dict).
Any other storage (C{redis://}, C{rediss://}, C{redis+unix://}) shares the
budget between gateway processes; C{limits} talks to it with blocking
redis-py, so every hit runs in the reactor's thread pool and the reactor is
never blocked.  A failing storage never turns into an error response or a
hang: the limiter I{fails open to per-process limits}, as
L{mcpgateway.policy.storage.Counters} describes (timeouts, retries, the
warning).  Failing closed would turn a Redis outage into a gateway outage for
every call of a live phone conversation; failing fully open would lift the
limit on password guessing exactly when nobody is watching.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.strategies import FixedWindowRateLimiter
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from mcpgateway.config import ConfigError, RateLimitConfig
from mcpgateway.errors import retry_after_header
from mcpgateway.observe.logs import logger
from mcpgateway.policy.storage import HIT_TIMEOUT, STORAGE_RETRY_INTERVAL, Counters, escape_key

__all__ = [
    "AUTH_FAILURE_LIMIT",
    "CALL_LIMIT",
    "DEFAULT_LIMITS",
    "GROUPS",
    "SESSION_DELETE_LIMIT",
    "STORAGE_URI",
    "TOOLS_LIMIT",
    "UNLIMITED",
    "Decision",
    "RateLimiter",
    "parse_limits",
]

log = logger("mcpgateway.ratelimit")

# -- defaults (RateLimitConfig's; see its docstring for why) ----------------------

_DEFAULTS = RateLimitConfig()
DEFAULT_LIMITS: tuple[str, ...] = _DEFAULTS.default_limits
TOOLS_LIMIT = _DEFAULTS.tools_limit
CALL_LIMIT = _DEFAULTS.call_limit
SESSION_DELETE_LIMIT = _DEFAULTS.session_delete_limit
AUTH_FAILURE_LIMIT = _DEFAULTS.auth_failure_limit
STORAGE_URI = _DEFAULTS.storage_uri

#: The groups a request can be counted in.
GROUPS: tuple[str, ...] = ("default", "tools", "call", "session_delete", "auth_failure", "mcp")

_SYNTAX = (
    "expected e.g. '30 per minute', '10/second' or '1/second; 50/hour' (units: second, minute, hour, day, month, year)"
)


@dataclass(frozen=True)
class Decision:
    """
    Whether one request may proceed, and what its limit looks like now.

    @ivar allowed: Whether the request is within every limit of its group.
    @ivar limit: The amount of the tightest limit (the one with the fewest
        requests left; when refused, the exhausted one that resets last);
        C{0} when no limit applies (limiting disabled, or none configured for
        the group).
    @ivar remaining: Requests left in that limit's window.
    @ivar reset_at: When that window ends (POSIX time).
    @ivar retry_after: Seconds until a request may succeed; C{0} if allowed.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_at: float
    retry_after: float = 0.0

    def headers(self) -> list[tuple[bytes, bytes]]:
        """
        @return: C{X-RateLimit-Limit}, C{X-RateLimit-Remaining} and
            C{X-RateLimit-Reset} (POSIX seconds, rounded up), and C{Retry-After}
            (whole seconds, at least 1) when refused; nothing when no limit applies.
        """
        if self.limit <= 0:
            return []
        headers = [
            (b"X-RateLimit-Limit", str(self.limit).encode()),
            (b"X-RateLimit-Remaining", str(self.remaining).encode()),
            (b"X-RateLimit-Reset", str(math.ceil(self.reset_at)).encode()),
        ]
        if not self.allowed:
            headers.append((b"Retry-After", retry_after_header(self.retry_after)))
        return headers


#: The decision when no limit applies.
UNLIMITED = Decision(allowed=True, limit=0, remaining=0, reset_at=0.0)


def parse_limits(text: str, path: str) -> list[RateLimitItem]:
    """
    @param text: A limit string, possibly several separated by C{;}, C{,} or C{|}.
    @param path: Its configuration key, for the error.
    @return: Its limits (none for an empty string).
    @raise ConfigError: Naming C{path} if it cannot be parsed or allows nothing.
    """
    if not text.strip():
        return []
    try:
        items = parse_many(text.strip())
    except ValueError:
        raise ConfigError(f"{path}: cannot parse {text!r} ({_SYNTAX})") from None
    for item in items:
        if item.amount <= 0:
            raise ConfigError(f"{path}: {text!r} allows no request at all; the amount must be at least 1")
    return items


def _decide(
    limiter: FixedWindowRateLimiter, items: Sequence[RateLimitItem], identifiers: tuple[str, str], consume: bool
) -> Decision:
    """
    Count one request against C{items} (shortest window first, stopping at
    the first refusal) and describe the tightest limit.  Blocking on a
    remote storage: call it in a thread.

    @param consume: C{False} to only look (would a request be allowed?).
    """
    refused = False
    if consume:
        for item in items:
            if not limiter.hit(item, *identifiers):
                refused = True
                break
    stats = [(item, limiter.get_window_stats(item, *identifiers)) for item in items]
    now = time.time()
    exhausted = [(item, stat) for item, stat in stats if stat.remaining <= 0]
    if not consume:
        refused = bool(exhausted)
    if refused and exhausted:
        item, stat = max(exhausted, key=lambda pair: pair[1].reset_time)
        return Decision(False, item.amount, 0, stat.reset_time, max(0.0, stat.reset_time - now))
    item, stat = min(stats, key=lambda pair: (pair[1].remaining, -pair[1].reset_time))
    if refused:  # the window ended between the hit and the look
        return Decision(False, item.amount, stat.remaining, stat.reset_time, max(0.0, stat.reset_time - now))
    return Decision(True, item.amount, stat.remaining, stat.reset_time)


def _group_limits(config: RateLimitConfig) -> dict[str, tuple[RateLimitItem, ...]]:
    """
    @return: Each group's limits, shortest window first, duplicates dropped.
    @raise ConfigError: Naming the key of a limit string that is wrong.
    """
    defaults: list[RateLimitItem] = []
    for index, text in enumerate(config.default_limits):
        defaults.extend(parse_limits(text, f"rate_limiting.default_limits[{index}]"))
    auth_failure = config.auth_failure_limit
    own: Mapping[str, tuple[str, str]] = {
        "default": ("", ""),
        "tools": ("tools_limit", config.tools_limit),
        "call": ("call_limit", config.call_limit),
        "session_delete": ("session_delete_limit", config.session_delete_limit),
        "auth_failure": ("auth_failure_limit", auth_failure),
        "mcp": ("", ""),  # the MCP endpoints: default_limits
    }
    groups: dict[str, tuple[RateLimitItem, ...]] = {}
    for group, (name, text) in own.items():
        items = parse_limits(text, f"rate_limiting.{name}") if name else []
        unique = {(item.amount, item.get_expiry()): item for item in items or defaults}
        groups[group] = tuple(sorted(unique.values(), key=lambda item: (item.get_expiry(), item.amount)))
    return groups


class RateLimiter:
    """
    Counts requests per group and key against the configured limits.

    Only L{hit} and L{peek} are called per request; both fire with a
    L{Decision} and never fail because of the storage.
    """

    def __init__(
        self,
        config: RateLimitConfig,
        *,
        clock: IReactorTime | None = None,
        storage_retry_interval: float = STORAGE_RETRY_INTERVAL,
        hit_timeout: float = HIT_TIMEOUT,
    ) -> None:
        """
        Check the configuration and prepare the storage (nothing is
        connected yet: a Redis that is down at start-up is handled like one
        that goes down later).

        @param config: The C{rate_limiting} section.  An empty storage URI
            means C{memory://}.  C{auth_failure_limit} is read if the section
            has it (L{AUTH_FAILURE_LIMIT} otherwise).
        @param clock: Times the shared storage's hits and retries; the
            global reactor if L{None}.
        @param storage_retry_interval: After a storage failure, seconds
            before it is tried again.
        @param hit_timeout: Seconds after which a hit on the shared storage
            is counted in this process instead.
        @raise ConfigError: Naming the key of a limit or storage URI that is wrong.
        """
        self._enabled = config.enabled
        self._limits = _group_limits(config)
        self._counters = Counters(
            config.storage_uri.strip() or STORAGE_URI,
            "rate_limiting.storage_uri",
            log,
            what="rate-limit",
            clock=clock,
            retry_interval=storage_retry_interval,
            hit_timeout=hit_timeout,
        )  # checked even when disabled
        if not self._enabled:
            self._counters.close()

    @property
    def shared(self) -> bool:
        """
        Whether the budget is shared between processes (a non-memory storage).
        """
        return self._counters.shared

    def limits(self, group: str) -> tuple[RateLimitItem, ...]:
        """
        @param group: One of L{GROUPS}.
        @return: Its limits, shortest window first (empty: not limited).
        @raise ValueError: For an unknown group.
        """
        try:
            return self._limits[group]
        except KeyError:
            raise ValueError(f"unknown rate-limit group {group!r} (known: {', '.join(GROUPS)})") from None

    def hit(self, group: str, key: str) -> Deferred[Decision]:
        """
        Count one request of C{group} for C{key}.

        @param group: One of L{GROUPS}.
        @param key: Whom to count it for, e.g. C{"principal:alice"} or C{"addr:192.0.2.7"}.
        @return: Fires with the L{Decision}; never fails because of the storage.
        @raise ValueError: For an unknown group (a programming error).
        """
        return self._run(group, key, consume=True)

    def peek(self, group: str, key: str) -> Deferred[Decision]:
        """
        Tell whether a request of C{group} for C{key} would be allowed,
        without counting it: e.g. refuse a client address that has exhausted
        C{auth_failure} I{before} checking its credentials, so that a guessed
        password is not confirmed.

        @return: Fires with the L{Decision}.
        @raise ValueError: For an unknown group.
        """
        return self._run(group, key, consume=False)

    def close(self) -> None:
        """
        Disconnect from the storage (call when the gateway stops).
        """
        self._counters.close()

    # -- internals -------------------------------------------------------------

    def _run(self, group: str, key: str, consume: bool) -> Deferred[Decision]:
        items = self.limits(group)
        if not self._enabled or not items:
            return succeed(UNLIMITED)
        identifiers = (group, escape_key(key))
        return self._counters.run(lambda limiter: _decide(limiter, items, identifiers, consume))
