"""
L{mcpgateway.children.backoff.StartBackoff} and L{credential_key} on their
own, with a L{Clock}: the service's backoff and a caller's credential's
back off apart.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from twisted.internet.task import Clock

from mcpgateway.children.backoff import StartBackoff, credential_key
from mcpgateway.children.child import StartFailed
from mcpgateway.config import ServiceConfig
from mcpgateway.errors import ServiceUnavailable
from mcpgateway.mcp.exits import ExitInfo

SHARED = {"TOKEN": "default-token"}


def backoff(clock: Clock, random_value: float = 1.0) -> StartBackoff:
    config = ServiceConfig(name="gh", command=("prog",), backoff_initial=2.0, backoff_max=8.0, backoff_reset=30.0)
    return StartBackoff(config, clock, lambda: random_value)


def failure() -> StartFailed:
    return StartFailed("bad token", ExitInfo(1, None, None, "401"), "401")


def refused(start: StartBackoff, credential: str | None) -> ServiceUnavailable:
    with pytest.raises(ServiceUnavailable) as caught:
        start.check(credential)
    return caught.value


def test_the_service_s_own_credential_has_no_key() -> None:
    def shared() -> Mapping[str, str]:
        asked.append(True)
        return SHARED

    asked: list[bool] = []
    assert credential_key(None, shared) is None
    assert credential_key({}, shared) is None
    assert asked == [], "nothing to compare: the shared credential is not asked for"
    assert credential_key(dict(SHARED), shared) is None
    key = credential_key({"TOKEN": "alice-token"}, shared)
    assert key is not None and "alice-token" not in key
    assert credential_key({"TOKEN": "alice-token"}, shared) == key
    assert credential_key({"TOKEN": "bob-token"}, shared) != key


def test_a_credential_s_failures_refuse_only_that_credential() -> None:
    clock = Clock()
    start = backoff(clock)
    error = start.failed(failure(), "alice")
    assert "with this caller's credential" in error.message
    assert error.retry_after == pytest.approx(2.0)
    assert (start.failures, start.start_failures, start.failing) == (0, 1, False)
    assert start.credentials_backing_off == 1
    start.check(None)
    start.check("bob")
    again = refused(start, "alice")
    assert (again.message, again.retry_after) == (error.message, pytest.approx(2.0))
    clock.advance(2.0)
    start.check("alice")
    assert start.credentials_backing_off == 0
    # A second failure in a row doubles that credential's delay only.
    assert start.failed(failure(), "alice").retry_after == pytest.approx(4.0)
    start.started("alice")
    start.check("alice")
    assert start.failed(failure(), "alice").retry_after == pytest.approx(2.0)


def test_the_service_s_failures_refuse_every_caller_until_the_delay_is_over() -> None:
    clock = Clock()
    start = backoff(clock, random_value=0.0)
    error = start.failed(failure())
    assert error.retry_after == pytest.approx(1.0)  # half of backoff_initial, at the lowest jitter
    assert (start.failures, start.failing, start.wait) == (1, True, pytest.approx(1.0))
    assert start.last_failure is error
    assert refused(start, "alice").retry_after == pytest.approx(1.0)
    clock.advance(0.25)
    assert refused(start, None).retry_after == pytest.approx(0.75)
    clock.advance(0.75)
    start.check(None)
    assert (start.failing, start.wait) == (False, 0.0)
    assert start.failures == 1, "the count stays until a child is stable"
    start.stable()
    assert start.failures == 0


def test_forget_tries_everything_at_once() -> None:
    clock = Clock()
    start = backoff(clock)
    start.failed(failure())
    start.failed(failure(), "alice")
    start.forget()
    start.check(None)
    start.check("alice")
    assert (start.failures, start.credentials_backing_off, start.start_failures) == (0, 0, 2)


def test_a_credential_s_failure_is_not_what_the_service_s_backoff_answers() -> None:
    """
    Alice's start was under way when the service's own failed: hers fails
    after.  Every other caller, refused while the service backs off, is
    told the service's failure, not "failed to start with this caller's
    credential" and alice's stderr; C{GET /services} shows it too.
    """
    clock = Clock()
    start = backoff(clock)
    own = start.failed(StartFailed("cannot reach the API", ExitInfo(1, None, None, "down"), "down"))
    start.failed(failure(), "alice")
    for caller in (None, "bob"):
        told = refused(start, caller)
        assert (told.message, told.details["stderr_tail"]) == (own.message, own.details["stderr_tail"])
    assert start.service_failure is own
    assert start.last_failure is not None and "with this caller's credential" in start.last_failure.message
