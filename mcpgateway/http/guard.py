"""
The guard every route passes: credentials (401 otherwise) and rate limits
(429), with security events and metrics for what it refuses.

Requests without valid credentials count against C{auth_failure} for the
client's address, so password guessing is limited too.
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from mcpgateway.errors import LimitReached, Unauthorized
from mcpgateway.observe.metrics import GatewayMetrics
from mcpgateway.observe.security import security_event
from mcpgateway.policy.auth import CHALLENGES, Authenticator, Principal
from mcpgateway.policy.ratelimit import Decision

__all__ = ["Guard", "Limiter", "client_address"]


class Limiter(Protocol):
    """
    What the guard needs of a rate limiter (L{mcpgateway.policy.ratelimit.RateLimiter}).
    """

    def hit(self, group: str, key: str) -> Deferred[Decision]:
        """
        Count one request of C{group} for C{key}.
        """

    def peek(self, group: str, key: str) -> Deferred[Decision]:
        """
        Would a request of C{group} for C{key} be allowed?  (Counts nothing.)
        """


def client_address(request: IRequest) -> str:
    """
    @return: The peer's IP address (or C{"-"} for a non-IP transport).
    """
    return str(getattr(request.getClientAddress(), "host", "-"))


class Guard:
    """
    Authentication and rate limits of HTTP requests.

    @ivar authenticator: Checks credentials.
    @ivar limiter: Rate limits, or L{None} for none.
    @ivar metrics: Counts refusals.
    """

    def __init__(self, authenticator: Authenticator, limiter: Limiter | None, metrics: GatewayMetrics) -> None:
        self.authenticator = authenticator
        self.limiter = limiter
        self.metrics = metrics
        self._admitted: weakref.WeakKeyDictionary[IRequest, Principal] = weakref.WeakKeyDictionary()

    def principal_of(self, request: IRequest) -> Principal | None:
        """
        @return: Who L{admit} admitted C{request} as, or L{None}.
        """
        return self._admitted.get(request)

    async def admit(self, request: IRequest, group: str) -> Principal:
        """
        Authenticate C{request} and count it against the rate limit of
        C{group} for its principal.

        @return: Who is calling.
        @raise Unauthorized: Without valid credentials (C{WWW-Authenticate} set).
        @raise LimitReached: Over a limit (C{Retry-After} set).
        """
        address = f"addr:{client_address(request)}"
        # An address that used up its failures is refused before its
        # credentials are even checked, so a right guess gains nothing.
        await self.limit(request, "auth_failure", address, None, count=False)
        header = request.getHeader(b"authorization")
        # A password hash to verify is counted as an attempt first, so a
        # burst of guesses cannot make the gateway hash more than the budget.
        costly = self.authenticator.costly(header)
        if costly:
            await self.limit(request, "auth_failure", address, None)
        principal = await self.authenticator.authenticate(header)
        if principal is None:
            self.metrics.auth_failures.inc()
            self.security("auth_failure", request, None)
            if not costly:
                await self.limit(request, "auth_failure", address, None)
            request.responseHeaders.setRawHeaders(b"WWW-Authenticate", list(CHALLENGES))
            raise Unauthorized("missing or invalid credentials")
        await self.limit(request, group, f"principal:{principal.name}", principal)
        self._admitted[request] = principal
        return principal

    async def limit(
        self, request: IRequest, group: str, key: str, principal: Principal | None, *, count: bool = True
    ) -> None:
        """
        Count the request against C{group}'s limit for C{key} (or, with
        C{count=False}, only check that the limit is not used up).

        @raise LimitReached: With C{Retry-After} when over the limit.
        """
        if self.limiter is None:
            return
        decision = await (self.limiter.hit(group, key) if count else self.limiter.peek(group, key))
        if count or not decision.allowed:
            for name, value in decision.headers():
                request.setHeader(name, value)
        if not decision.allowed:
            self.metrics.rate_limited.labels(group).inc()
            self.security("rate_limited", request, principal, group=group)
            raise LimitReached(
                f"rate limit reached for {group} requests; retry after {decision.retry_after:.0f} s",
                "rate_limited",
                retry_after=decision.retry_after,
            )

    def security(self, kind: str, request: IRequest, principal: Principal | None, **fields: Any) -> None:
        """
        Record a security event about C{request}.
        """
        route = f"{request.method.decode('latin-1')} {request.path.decode('latin-1')}"
        security_event(
            kind,
            address=client_address(request),
            principal=principal.name if principal else None,
            route=route,
            **fields,
        )
