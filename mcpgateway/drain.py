"""
A graceful drain of this gateway process, as a plain object: refuse new
sessions, let the live ones go on until they end or a deadline passes, then
close what is left.

SIGTERM (through the top service, L{mcpgateway.runtime.DrainingService})
and C{POST /admin/drain} start it; C{/health} reports it so a balancer's
health check sends new sessions elsewhere.  It knows nothing of HTTP or
signals.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater

from mcpgateway.gateway import Gateway
from mcpgateway.lib.deferreds import Shared, observe
from mcpgateway.observe.logs import logger, now_iso

__all__ = ["Drain"]

log = logger(__name__)


class Drain:
    """
    The drain of one gateway process.  Once started it is never undone: a
    process that drains is on its way out.

    @ivar timeout: The default time live sessions are given
        (C{session.drain_timeout}), in seconds.
    @ivar deadline: The clock time at which the remaining sessions are
        closed, or L{None} before the drain starts.
    @ivar drained: Whether the drain has started and no session is left.
    """

    def __init__(self, gateway: Gateway, clock: IReactorTime, timeout: float) -> None:
        """
        @param gateway: Whose sessions drain.
        @param clock: The deadline's clock.
        @param timeout: The default time live sessions are given, in seconds.
        """
        self.gateway = gateway
        self.clock = clock
        self.timeout = timeout
        self.deadline: float | None = None
        self.drained = False
        self._empty: Shared[None] | None = None
        self._timer: IDelayedCall | None = None

    @property
    def draining(self) -> bool:
        """
        @return: Whether the drain has started (new sessions are refused).
        """
        return self._empty is not None

    def drain(self, timeout: float | None = None) -> Deferred[None]:
        """
        Start the drain, or join the one under way: new sessions are refused
        from now on; the live ones may go on for C{timeout} seconds, after
        which they are closed (their children stopped, their calls in flight
        answered 503, as at a stop: L{Gateway.close_sessions}).

        @param timeout: Seconds the live sessions are given (the configured
            C{session.drain_timeout} if L{None}); a second call with a
            shorter one brings the deadline closer, never further.
        @return: Fires (with L{None}, never an error) once no session is
            left: they all ended, or were closed at the deadline.  Cancelling
            it stops that wait only, not the drain.
        """
        now = self.clock.seconds()
        deadline = now + (self.timeout if timeout is None else timeout)
        if self.deadline is None or deadline < self.deadline:
            self.deadline = deadline
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self._empty is None:
            self.gateway.sessions.refusing = True
            # One turn later: the last session's close (its calls cancelled,
            # its children on their way out) is complete before anyone
            # waiting for the drain, e.g. the stop, goes on.
            emptied = self.gateway.sessions.when_empty()
            emptied.addCallback(lambda _: deferLater(self.clock, 0, lambda: None))
            self._empty = observe(emptied)
            self._empty.wait().addCallback(self._ended)
            log.info(
                "draining: new sessions refused; {n} live session(s) have until {deadline} to end",
                n=len(self.gateway.sessions),
                deadline=now_iso(deadline),
            )
        if self._timer is None and not self.drained:
            self._timer = self.clock.callLater(max(0.0, self.deadline - now), self.finish)
        return self._empty.wait()

    def finish(self) -> None:
        """
        End the drain now: close every session still live.  Does nothing
        before the drain has started.
        """
        if self._empty is None or self.drained:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        log.info("drain deadline: closing {n} live session(s)", n=len(self.gateway.sessions))
        self.gateway.close_sessions()

    def _ended(self, _: None) -> None:
        self.drained = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        log.info("drained: no session is left")

    def describe(self) -> dict[str, Any]:
        """
        @return: The drain's fields for C{/health} and C{POST /admin/drain}:
            nothing before it starts; then C{drained} (no session left),
            C{sessions} (how many are still live) and C{drain_deadline}.
        """
        if self.deadline is None:
            return {}
        return {
            "drained": self.drained,
            "sessions": len(self.gateway.sessions),
            "drain_deadline": now_iso(self.deadline),
        }
