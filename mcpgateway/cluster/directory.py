"""
The session directory: which gateway process owns which session, in Redis.

One key per session, C{<prefix>session:<id>}, holding the owner's internal
address and incarnation (C{http://host:port#<random>}, L{Directory.me})
with a TTL: a process that starts again at the same address (a worker its
supervisor restarted, a gateway systemd restarted after a crash) is
another incarnation, and can tell its predecessor's entries, whose
sessions died with it, from its own.  The owner writes it when the
session's first call arrives (a Lua script that is C{SET NX} returning the
winner, so two first calls on two processes agree on one owner), refreshes
it on every sweep of the session reaper, and deletes it when the session
closes; a dead owner's entries expire after C{cluster.entry_ttl}.  Each
process also keeps C{<prefix>instance:<address>} alive the same way, so the
fleet can be counted and a draining process can pass a new session on to
one that takes new sessions; another process deletes it at once when that
address refuses connections (L{Directory.delist}).

redis-py is blocking: every command runs in the reactor's thread pool
(C{deferToThread}), as L{mcpgateway.policy.storage} does, with short socket
timeouts; its connection pool is thread-safe.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from mcpgateway.config import ClusterConfig

__all__ = ["Directory", "DirectoryUnavailable", "address_of"]

T = TypeVar("T")

#: KEYS[1] the session; ARGV[1] this owner, ARGV[2] the TTL in ms.  The owner after the call.
_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner then return owner end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""
#: KEYS[1] the session; ARGV[1] the owner it must still name.  1 if deleted.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
#: KEYS: the sessions this owner holds; ARGV[1] the owner, ARGV[2] the TTL in ms.
#: An entry lost (Redis restarted, TTL passed) is written again; another owner's is left alone.
_REFRESH = """
local kept = 0
for _, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if (not owner) or owner == ARGV[1] then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    kept = kept + 1
  end
end
return kept
"""
#: Sessions refreshed per script call (one script blocks Redis while it runs).
_REFRESH_BATCH = 500
#: Socket timeouts of the Redis connection, seconds.
SOCKET_TIMEOUT = 2.0


def address_of(owner: str) -> str:
    """
    @param owner: An entry's value.
    @return: The owner's internal address (C{http://host:port}), where its forwarded requests go.
    """
    return owner.partition("#")[0]


class DirectoryUnavailable(Exception):
    """
    Redis could not be asked (down, unreachable, too slow).
    """


class Directory:
    """
    The directory, as seen by one process.

    @ivar address: This process's internal address.
    @ivar incarnation: A random token of this process's life.
    """

    def __init__(
        self,
        config: ClusterConfig,
        address: str,
        client: redis.Redis | None = None,
        run: Callable[..., Deferred[Any]] = deferToThread,
    ) -> None:
        """
        @param config: The C{cluster} section.
        @param address: This process's internal address.
        @param client: The Redis client (one from C{config.redis} if L{None}).
        @param run: Runs a blocking function off the reactor (tests pass a synchronous one).
        """
        self.address = address
        self.incarnation = secrets.token_hex(6)
        self._ttl_ms = int(config.entry_ttl * 1000)
        self._prefix = config.key_prefix
        self._redis = client or redis.Redis.from_url(
            config.redis, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT, decode_responses=True
        )
        self._claim = self._redis.register_script(_CLAIM)
        self._release = self._redis.register_script(_RELEASE)
        self._refresh = self._redis.register_script(_REFRESH)
        self._run = run

    @property
    def me(self) -> str:
        """
        The value of this process's entries: its address and incarnation.
        """
        return f"{self.address}#{self.incarnation}"

    def key(self, session_id: str) -> str:
        """
        @return: The Redis key of C{session_id}'s entry.
        """
        return f"{self._prefix}session:{session_id}"

    def _call(self, work: Callable[[], T]) -> Deferred[T]:
        def guarded() -> T:
            try:
                return work()
            except redis.RedisError as error:
                raise DirectoryUnavailable(str(error) or type(error).__name__) from None

        return self._run(guarded)

    def claim(self, session_id: str) -> Deferred[str]:
        """
        Become C{session_id}'s owner unless it has one.

        @return: A L{Deferred} firing with the owner's entry (L{me} if this
            process won), or failing with L{DirectoryUnavailable}.
        """
        return self._call(lambda: str(self._claim(keys=[self.key(session_id)], args=[self.me, self._ttl_ms])))

    def owner(self, session_id: str) -> Deferred[str | None]:
        """
        @return: A L{Deferred} firing with the owner's entry, or L{None} if
            the session has none.
        """

        def get() -> str | None:
            value = self._redis.get(self.key(session_id))
            return None if value is None else str(value)

        return self._call(get)

    def release(self, session_id: str, owner: str | None = None) -> Deferred[bool]:
        """
        Delete C{session_id}'s entry if it still names C{owner} (an entry's
        value; this process if L{None}): never another owner's.

        @return: A L{Deferred} firing with whether it was deleted.
        """
        who = self.me if owner is None else owner
        return self._call(lambda: bool(self._release(keys=[self.key(session_id)], args=[who])))

    def refresh(self, session_ids: Iterable[str], listed: bool = True) -> Deferred[tuple[int, int]]:
        """
        Renew the TTL of this process's entries and of its instance key, then
        count the fleet.

        @param session_ids: The sessions this process holds.
        @param listed: Whether this process takes new sessions (its instance
            key is renewed); a draining one is not listed.
        @return: A L{Deferred} firing with the fleet's (sessions, instances).
        """
        keys = [self.key(session_id) for session_id in session_ids]

        def work() -> tuple[int, int]:
            for start in range(0, len(keys), _REFRESH_BATCH):
                self._refresh(keys=keys[start : start + _REFRESH_BATCH], args=[self.me, self._ttl_ms])
            if listed:
                self._redis.set(f"{self._prefix}instance:{self.address}", "1", px=self._ttl_ms)
            return self._count("session:*"), len(self._instances())

        return self._call(work)

    def instances(self) -> Deferred[list[str]]:
        """
        @return: A L{Deferred} firing with the internal addresses of the
            processes that take new sessions (their instance keys: listed,
            not draining, not yet expired).
        """
        return self._call(self._instances)

    def _instances(self) -> list[str]:
        prefix = f"{self._prefix}instance:"
        return [str(key)[len(prefix) :] for key in self._redis.scan_iter(match=prefix + "*", count=1000)]

    def _count(self, pattern: str) -> int:
        return sum(1 for _ in self._redis.scan_iter(match=f"{self._prefix}{pattern}", count=1000))

    def leave(self) -> Deferred[None]:
        """
        Remove this process's instance key (its sessions are released one by
        one as they close): at a stop, and when it starts to drain.
        """
        return self.delist(self.address)

    def delist(self, address: str) -> Deferred[None]:
        """
        Remove the instance key of the process at C{address}: this one
        leaving, or another that is gone (nothing listens there any more;
        its key would otherwise outlive it by up to C{entry_ttl}).  A live
        process lists itself again at its next sweep.
        """

        def delete() -> None:
            self._redis.delete(f"{self._prefix}instance:{address}")

        return self._call(delete)

    def close(self) -> None:
        """
        Disconnect from Redis.
        """
        self._redis.close()
