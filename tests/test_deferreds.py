"""
L{mcpgateway.lib.deferreds}: one outcome for many waiters, and waiting with a
timeout that never cancels the work.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from mcpgateway.lib.deferreds import Shared, observe, wait_for


class Boom(Exception):
    pass


def outcome(d: Deferred[Any]) -> list[Any]:
    """
    @return: A list that receives C{d}'s result or failure (consuming it).
    """
    box: list[Any] = []
    d.addBoth(box.append)
    return box


def failed_with(box: list[Any], kind: type[BaseException]) -> bool:
    return len(box) == 1 and isinstance(box[0], Failure) and box[0].check(kind) is not None


# -- Shared ------------------------------------------------------------------------------


def test_many_waiters_get_the_same_result() -> None:
    shared: Shared[object] = Shared()
    value = object()
    boxes = [outcome(shared.wait()) for _ in range(5)]
    assert all(box == [] for box in boxes)
    assert not shared.done
    shared.fire(value)
    assert shared.done
    assert all(box == [value] for box in boxes)
    assert all(box[0] is value for box in boxes)


def test_many_waiters_get_the_same_failure() -> None:
    shared: Shared[int] = Shared()
    boxes = [outcome(shared.wait()) for _ in range(4)]
    shared.fire(Failure(Boom("x")))
    assert all(failed_with(box, Boom) for box in boxes)
    assert len({id(box[0].value) for box in boxes}) == 1


def test_cancelling_one_waiter_leaves_the_others_and_the_source() -> None:
    cancelled: list[bool] = []
    source: Deferred[str] = Deferred(lambda d: cancelled.append(True))
    shared = observe(source)
    first, second, third = shared.wait(), shared.wait(), shared.wait()
    box1, box2, box3 = outcome(first), outcome(second), outcome(third)
    second.cancel()
    assert failed_with(box2, CancelledError)
    assert box1 == [] and box3 == []
    assert not cancelled
    assert not source.called
    source.callback("done")
    assert box1 == ["done"] and box3 == ["done"]
    assert len(box2) == 1  # fired once only


def test_cancelling_every_waiter_leaves_the_source() -> None:
    cancelled: list[bool] = []
    source: Deferred[str] = Deferred(lambda d: cancelled.append(True))
    shared = observe(source)
    waiters = [shared.wait() for _ in range(3)]
    boxes = [outcome(w) for w in waiters]
    for waiter in waiters:
        waiter.cancel()
    assert all(failed_with(box, CancelledError) for box in boxes)
    assert not cancelled
    source.callback(1)
    assert shared.done
    assert outcome(shared.wait()) == [1]


def test_wait_after_done_fires_immediately() -> None:
    shared: Shared[int] = Shared()
    shared.fire(7)
    assert outcome(shared.wait()) == [7]
    assert outcome(shared.wait()) == [7]


def test_wait_after_failure_fires_immediately_each_time() -> None:
    shared: Shared[int] = Shared()
    shared.fire(Failure(Boom()))
    assert failed_with(outcome(shared.wait()), Boom)
    assert failed_with(outcome(shared.wait()), Boom)


def test_fire_twice_keeps_the_first_outcome() -> None:
    shared: Shared[int] = Shared()
    box = outcome(shared.wait())
    shared.fire(1)
    shared.fire(2)
    assert box == [1]
    assert outcome(shared.wait()) == [1]


def test_observe_ends_the_source_chain() -> None:
    source: Deferred[int] = Deferred()
    shared = observe(source)
    box = outcome(shared.wait())
    source.errback(Boom())
    assert failed_with(box, Boom)
    # The source's own failure was consumed (the autouse fixture would report it otherwise).
    assert outcome(source) == [None]


def test_observe_an_already_fired_source() -> None:
    source: Deferred[str] = Deferred()
    source.callback("early")
    assert outcome(observe(source).wait()) == ["early"]


# -- wait_for ------------------------------------------------------------------------------


def test_wait_for_times_out_without_cancelling_the_source() -> None:
    clock = Clock()
    cancelled: list[bool] = []
    source: Deferred[str] = Deferred(lambda d: cancelled.append(True))
    shared = observe(source)
    box = outcome(wait_for(shared, 5, clock))
    other = outcome(shared.wait())
    clock.advance(4.999)
    assert box == []
    clock.advance(0.001)
    assert failed_with(box, TimeoutError)
    assert not cancelled
    assert not source.called
    assert not shared.done
    assert clock.getDelayedCalls() == []
    # The work goes on and its outcome still reaches other waiters.
    source.callback("later")
    assert other == ["later"]
    assert len(box) == 1


def test_wait_for_result_before_timeout_leaves_no_delayed_call() -> None:
    clock = Clock()
    shared: Shared[str] = Shared()
    box = outcome(wait_for(shared, 5, clock))
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(2)
    shared.fire("ok")
    assert box == ["ok"]
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert box == ["ok"]


def test_wait_for_failure_before_timeout_passes_through() -> None:
    clock = Clock()
    shared: Shared[str] = Shared()
    box = outcome(wait_for(shared, 5, clock))
    shared.fire(Failure(Boom()))
    assert failed_with(box, Boom)
    assert clock.getDelayedCalls() == []


def test_wait_for_already_done() -> None:
    clock = Clock()
    shared: Shared[str] = Shared()
    shared.fire("ready")
    assert outcome(wait_for(shared, 5, clock)) == ["ready"]
    assert clock.getDelayedCalls() == []


def test_cancelling_wait_for_detaches_only_that_waiter() -> None:
    clock = Clock()
    cancelled: list[bool] = []
    source: Deferred[str] = Deferred(lambda d: cancelled.append(True))
    shared = observe(source)
    d = wait_for(shared, 5, clock)
    box = outcome(d)
    other = outcome(shared.wait())
    d.cancel()
    assert failed_with(box, CancelledError)
    assert clock.getDelayedCalls() == []
    assert not cancelled
    source.callback("x")
    assert other == ["x"]
    assert len(box) == 1


def test_two_waits_with_different_timeouts() -> None:
    clock = Clock()
    shared: Shared[str] = Shared()
    short = outcome(wait_for(shared, 1, clock))
    long = outcome(wait_for(shared, 10, clock))
    clock.advance(1)
    assert failed_with(short, TimeoutError)
    assert long == []
    shared.fire("v")
    assert long == ["v"]
    assert clock.getDelayedCalls() == []
