"""
Small Deferred helpers: one result awaited by many, and waiting without
cancelling.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

__all__ = ["Shared", "observe", "wait_for"]

T = TypeVar("T")


class Shared(Generic[T]):
    """
    One outcome that any number of callers wait for.

    Each L{Shared.wait} gets its own L{Deferred}; cancelling one of them
    detaches that waiter only and never touches the underlying work, so a
    client going away cannot cancel a spawn another client shares.
    """

    def __init__(self) -> None:
        self._waiters: list[Deferred[T]] = []
        self._outcome: T | Failure | None = None
        self.done = False

    def wait(self) -> Deferred[T]:
        """
        @return: Fires with the outcome (at once if it is known).
        """
        if self.done:
            return _fired(self._outcome)
        waiter: Deferred[T] = Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(waiter)
        return waiter

    def fire(self, outcome: T | Failure) -> None:
        """
        Set the outcome and wake every waiter.

        @param outcome: A result, or a L{Failure}.
        """
        if self.done:
            return
        self.done = True
        self._outcome = outcome
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            _deliver(waiter, outcome)


def _fired(outcome: Any) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    _deliver(d, outcome)
    return d


def _deliver(d: Deferred[Any], outcome: Any) -> None:
    if isinstance(outcome, Failure):
        d.errback(outcome)
    else:
        d.callback(outcome)


def observe(source: Deferred[T]) -> Shared[T]:
    """
    Wrap C{source} so several callers can wait for it.

    @param source: The work; its own callback chain ends here.
    @return: A L{Shared} fired with C{source}'s outcome.
    """
    shared: Shared[T] = Shared()

    def done(outcome: T | Failure) -> None:
        shared.fire(outcome)

    source.addBoth(done)
    return shared


def wait_for(source: Shared[T], timeout: float, clock: IReactorTime) -> Deferred[T]:
    """
    Wait at most C{timeout} seconds for C{source} without cancelling it.

    @param source: The outcome to wait for.
    @param timeout: Seconds.
    @param clock: The clock.
    @return: Fires with the outcome, or fails with L{TimeoutError}; the work
        behind C{source} goes on either way.
    """
    waiter = source.wait()
    result: Deferred[T] = Deferred(lambda _: waiter.cancel())
    timer = clock.callLater(
        timeout, lambda: result.errback(Failure(TimeoutError(timeout))) if not result.called else None
    )

    def done(outcome: T | Failure) -> None:
        if timer.active():
            timer.cancel()
        if not result.called:
            _deliver(result, outcome)

    waiter.addBoth(done)
    return result
