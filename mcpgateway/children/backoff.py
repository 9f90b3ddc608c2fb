"""
The start-failure backoff of one service (L{mcpgateway.children.service}).

A failed start is retried after a jittered exponential delay: the
C{n}th failure in a row waits between half and all of
C{min(backoff_max, backoff_initial * 2 ** (n - 1))} seconds.  While that
lasts a start is refused at once with the last failure's
L{ServiceUnavailable} (and a C{Retry-After} of the time left).

The service's own failures and those of one caller's credential back off
apart: one caller's revoked token does not refuse every other caller.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

from mcpgateway.children.child import StartFailed
from mcpgateway.config import ServiceConfig
from mcpgateway.errors import ServiceUnavailable, stderr_excerpt
from mcpgateway.observe.logs import logger

__all__ = ["StartBackoff", "credential_key"]

log = logger("mcpgateway.service")


def credential_key(credential_env: Mapping[str, str] | None, shared_env: Callable[[], Mapping[str, str]]) -> str | None:
    """
    @param credential_env: The credential variables a child is started with.
    @param shared_env: Gives the service's own credential variables (the
        C{default} ones the tool listing uses too); asked only when there
        is a credential to compare.
    @return: Which backoff a start with C{credential_env} counts against:
        L{None} for the service's own (no credential, or C{shared_env}'s),
        else the caller's credential's (a digest, never the value).
    """
    if not credential_env or dict(credential_env) == dict(shared_env()):
        return None
    return hashlib.sha256(json.dumps(sorted(credential_env.items())).encode()).hexdigest()[:16]


@dataclass
class _Held:
    """
    The start failures of one caller's credential.

    @ivar failures: Consecutive failed starts with it.
    @ivar retry_at: The clock time before which it is not tried again.
    @ivar error: What its last failed start answered.
    """

    failures: int
    retry_at: float
    error: ServiceUnavailable


class StartBackoff:
    """
    How long a service, or one caller's credential, waits after failed starts.

    @ivar failures: Consecutive start failures (of the service, not of a
        caller's own credential: those back off apart).
    @ivar last_failure: The last start failure's L{ServiceUnavailable}.
    @ivar service_failure: The last of the service's own (not a caller's
        credential's): what a start is refused with while the service backs off.
    @ivar start_failures: Failed starts so far.
    """

    def __init__(self, config: ServiceConfig, clock: IReactorTime, random_source: Callable[[], float]) -> None:
        """
        @param config: The service's configuration (its C{backoff_*} settings).
        @param clock: Tells the time.
        @param random_source: A number in [0, 1) for each delay's jitter.
        """
        self._config = config
        self._clock = clock
        self._random = random_source
        self.failures = 0
        self.last_failure: ServiceUnavailable | None = None
        self.service_failure: ServiceUnavailable | None = None
        self.start_failures = 0
        self._retry_at = 0.0
        #: Start failures with a caller's own credential, by its digest.
        self._credentials: dict[str, _Held] = {}

    @property
    def failing(self) -> bool:
        """
        @return: Whether the service is backing off now.
        """
        return bool(self.failures) and self._clock.seconds() < self._retry_at

    @property
    def wait(self) -> float:
        """
        @return: Seconds until the service is tried again (0 when it is not
            backing off).
        """
        return max(0.0, self._retry_at - self._clock.seconds()) if self.failures else 0.0

    @property
    def credentials_backing_off(self) -> int:
        """
        @return: How many callers' credentials are backing off now.
        """
        now = self._clock.seconds()
        return sum(1 for held in self._credentials.values() if held.retry_at > now)

    def check(self, credential: str | None) -> None:
        """
        Refuse a start while its credential, or the service, backs off.

        @param credential: The caller's credential's key (L{credential_key}),
            or L{None} for the service's own.
        @raise ServiceUnavailable: The last failure once more, with a
            C{Retry-After} of the time left.
        """
        now = self._clock.seconds()
        held = self._credentials.get(credential) if credential is not None else None
        if held is not None and now < held.retry_at:
            raise _again(held.error, held.retry_at - now)
        if self.failures and now < self._retry_at and self.service_failure is not None:
            raise _again(self.service_failure, self._retry_at - now)

    def started(self, credential: str | None) -> None:
        """
        A start with C{credential} succeeded: that credential backs off no more.
        """
        if credential is not None:
            self._credentials.pop(credential, None)

    def failed(self, failure: StartFailed, credential: str | None = None) -> ServiceUnavailable:
        """
        Count a failed start and decide when to try again.

        @param failure: Why it failed.
        @param credential: The caller's credential's key, or L{None} for the
            service's own.
        @return: What the failed start (and every start refused until the
            delay is over) answers.
        """
        name = self._config.name
        self.start_failures += 1
        if credential is None:
            failures = self.failures + 1
        else:
            held = self._credentials.get(credential)
            failures = (held.failures if held is not None else 0) + 1
        delay = min(self._config.backoff_max, self._config.backoff_initial * 2 ** min(failures - 1, 32))
        delay = delay / 2 + self._random() * delay / 2
        retry_at = self._clock.seconds() + delay
        details: dict[str, Any] = {"service": name, "stderr_tail": stderr_excerpt(failure.stderr_tail)}
        code = None
        if failure.exit_info is not None:
            details["exit_status"] = failure.exit_info.exit_code
            details["exit_signal"] = failure.exit_info.signal
            cause = failure.exit_info.cause
            if cause is not None:
                code = "child_limit"
                details.update(limit=cause["limit"], value=cause["value"], key=cause["key"])
        whose = "" if credential is None else " with this caller's credential"
        error = ServiceUnavailable(
            f"service {name!r} failed to start{whose}: {failure.reason}", code, retry_after=delay, **details
        )
        self.last_failure = error
        if credential is None:
            self.failures, self._retry_at, self.service_failure = failures, retry_at, error
        else:
            self._credentials[credential] = _Held(failures, retry_at, error)
        log.warn(
            "{service}: start failed{whose} ({n} in a row), retry in {delay:.1f} s: {reason}",
            service=name,
            whose=whose.replace("this", "a"),
            n=failures,
            delay=delay,
            reason=failure.reason,
        )
        return error

    def stable(self) -> None:
        """
        A child stayed up for C{backoff_reset} seconds: clear the failure count.
        """
        if self.failures:
            log.info(
                "{service}: child up for {s:g} s, failure count reset",
                service=self._config.name,
                s=self._config.backoff_reset,
            )
        self.failures = 0

    def forget(self) -> None:
        """
        Forget every backoff: the next start is tried at once.
        """
        self.failures = 0
        self._retry_at = 0.0
        self._credentials.clear()


def _again(error: ServiceUnavailable, wait: float) -> ServiceUnavailable:
    """
    @return: C{error} once more while its backoff lasts, C{Retry-After} the time left.
    """
    return ServiceUnavailable(error.message, retry_after=wait, **error.details)
