"""
A service's warm pool (L{mcpgateway.children.service}): children started
ahead of need (C{prewarm}), so a new session's first call does not wait
for a start-up.

A warm child that dies before any use did not start soundly: it counts as
a failed start (L{mcpgateway.children.backoff}) and the pool waits out the
backoff instead of respawning in a loop.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from mcpgateway.children.backoff import StartBackoff
from mcpgateway.children.child import Child, StartFailed
from mcpgateway.config import ServiceConfig
from mcpgateway.errors import ServiceUnavailable
from mcpgateway.mcp.exits import ExitInfo

__all__ = ["POOL_REFILL_DELAY", "WarmPool"]

POOL_REFILL_DELAY = 0.2


class WarmPool:
    """
    The ready children of one service waiting for a session.
    """

    def __init__(
        self,
        config: ServiceConfig,
        clock: IReactorTime,
        spawn: Callable[[], Deferred[Child]],
        room: Callable[[], bool],
        backoff: StartBackoff,
    ) -> None:
        """
        @param config: The service's configuration (C{prewarm}, C{close_grace}).
        @param clock: Schedules the refills.
        @param spawn: Starts one of the service's children (counted in its
            children), with no caller's credential.
        @param room: Whether the pool may grow now (the gateway counts pool
            children against the session limits).
        @param backoff: The service's start-failure backoff, told of a warm
            child that dies unused.
        """
        self._config = config
        self._clock = clock
        self._spawn = spawn
        self._room = room
        self._backoff = backoff
        self._waiting: list[Child] = []
        self._starting = 0
        self._retry: IDelayedCall | None = None
        self._refill_timer: IDelayedCall | None = None
        self._stopping = False

    @property
    def waiting(self) -> tuple[Child, ...]:
        """
        @return: The ready children waiting in the pool, oldest first.
        """
        return tuple(self._waiting)

    @property
    def size(self) -> int:
        """
        @return: Ready children waiting in the pool.
        """
        return len(self._waiting)

    @property
    def pending(self) -> int:
        """
        @return: Pool children ready or starting.
        """
        return len(self._waiting) + self._starting

    def take(self) -> Child | None:
        """
        @return: The oldest live child, now out of the pool, or L{None} if
            there is none (dead ones found on the way are dropped).
        """
        while self._waiting:
            child = self._waiting.pop(0)
            if child.alive:
                return child
        return None

    def ready(self) -> Child | None:
        """
        @return: A live child of the pool, left in it, or L{None}.
        """
        return next((child for child in self._waiting if child.alive), None)

    def refill_soon(self, delay: float = POOL_REFILL_DELAY) -> None:
        """
        Refill the pool after C{delay} seconds, so that a replacement's
        start-up (a burst of CPU on a small machine) does not compete with the
        call that just took a warm child.
        """
        if self._stopping or self._config.prewarm == 0:
            return
        if self._refill_timer is None or not self._refill_timer.active():
            self._refill_timer = self._clock.callLater(delay, self.refill)

    def refill(self) -> None:
        """
        Start children until C{prewarm} are ready or starting, as far as the
        limits allow; never waits.
        """
        while (
            not self._stopping
            and len(self._waiting) + self._starting < self._config.prewarm
            and self._room()
            and not (self._retry is not None and self._retry.active())
        ):
            self._starting += 1
            self._spawn().addBoth(self._pooled)

    def _pooled(self, outcome: Child | Failure) -> None:
        self._starting -= 1
        if isinstance(outcome, Failure):
            error = outcome.value
            self._retry_later(error.retry_after if isinstance(error, ServiceUnavailable) and error.retry_after else 1.0)
            return
        if self._stopping:
            outcome.close(self._config.close_grace)
            return
        self._waiting.append(outcome)

    def _retry_later(self, delay: float) -> None:
        if not self._stopping and (self._retry is None or not self._retry.active()):
            self._retry = self._clock.callLater(delay, self.refill)

    def ended(self, child: Child, info: ExitInfo) -> None:
        """
        A child of the service ended: if it was waiting in the pool, refill
        (it was closed) or back off (it died unused).

        @param child: The child.
        @param info: How it ended.
        """
        if child not in self._waiting:
            return
        self._waiting.remove(child)
        if child.closing or self._stopping:
            self.refill()
        else:
            # A warm child that dies before any use did not start soundly:
            # back off as for a failed start instead of respawning in a loop.
            error = self._backoff.failed(
                StartFailed(f"the MCP server {info.describe()} while waiting in the warm pool", info, info.stderr_tail)
            )
            self._retry_later(error.retry_after or 1.0)

    def recycle(self) -> int:
        """
        Close the pool's children and fill it again soon with fresh ones,
        without waiting out a retry.

        @return: How many children were closed.
        """
        waiting, self._waiting = self._waiting, []
        for child in waiting:
            child.close(self._config.close_grace)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self.refill_soon()
        return len(waiting)

    def stop(self) -> None:
        """
        Start no more children; forget the waiting ones (the service closes
        all its children).
        """
        self._stopping = True
        for timer in (self._retry, self._refill_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._waiting.clear()
