"""
The guard every route passes: credentials (401 otherwise) and rate limits
(429), with security events and metrics for what it refuses.

Failed credentials are counted in the C{auth_failure} group, for the
client's address (C{addr:<ip>}) and, for Basic credentials, for the user
name (L{user_key}), so password guessing is limited from one address and
against one name from many.  What the budgets do I{not} refuse: a valid
bearer token of at least L{mcpgateway.policy.auth.STRONG_TOKEN_BYTES}
bytes (checked first, cheaply; it cannot be guessed), a valid JWT of a
configured issuer (L{mcpgateway.policy.jwt}: a signature cannot be guessed
either), and a credential verified before from the same address and still
remembered (L{Authenticator.recall}).  Everything else, a valid but never
verified password included, is refused unchecked once a budget is used up,
so that a right guess gains nothing.  A refused JWT counts against the
address like a wrong long token, except when the gateway could not get its
issuer's keys (the client was not guessing).

A browser logged in to the admin dashboard (L{mcpgateway.http.admin})
sends no C{Authorization} header but the cookie L{COOKIE}: without the
header, the guard admits the principal of that cookie's live browser
session (L{BrowserSessions}), so the dashboard's script reads the JSON API
as its principal.  A request with the cookie that may change something
(any method but GET and HEAD) must also carry the session's CSRF token in
C{X-CSRF-Token} and the gateway's own C{Origin}; otherwise it is refused
with 403 C{csrf_failed} and a C{csrf_refused} security event.

A 401 carries the challenges of L{ProtectedResource.challenges}: with
issuers, the Bearer one points to the RFC 9728 metadata, and a refused
bearer token gets C{error="invalid_token"}.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from mcpgateway.config import ServerConfig
from mcpgateway.errors import Forbidden, LimitReached, Unauthorized
from mcpgateway.http.oauth import ProtectedResource
from mcpgateway.names import PRINCIPAL_NAME
from mcpgateway.observe.metrics import GatewayMetrics
from mcpgateway.observe.security import security_event
from mcpgateway.policy.auth import Authenticator, Principal
from mcpgateway.policy.browser import BrowserSession, BrowserSessions
from mcpgateway.policy.ratelimit import Decision

__all__ = ["COOKIE", "CSRF_HEADER", "Guard", "Limiter", "client_address", "cookie_value", "user_key"]

#: The admin dashboard's session cookie.
COOKIE = b"mcpgateway_admin"
#: The header carrying a browser session's CSRF token.
CSRF_HEADER = b"x-csrf-token"
#: Methods that change nothing: no CSRF token needed with the cookie.
_SAFE_METHODS = frozenset({b"GET", b"HEAD"})


def cookie_value(request: IRequest, name: bytes = COOKIE) -> str | None:
    """
    @return: The value of cookie C{name} in C{request}'s C{Cookie} headers, or L{None}.
    """
    for header in request.requestHeaders.getRawHeaders(b"cookie", []):
        for part in header.split(b";"):
            key, equals, value = part.strip().partition(b"=")
            if equals and key == name:
                return str(value.decode("ascii", "replace"))
    return None


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


def user_key(name: bytes) -> str:
    """
    The C{auth_failure} key of a Basic user name.  The name is whatever the
    client sent (up to the header limit, any bytes), so only a name a
    principal could have is used as it is; any other is hashed, and the
    limiter's keys stay short and plain whatever arrives.

    @param name: The user name, as sent.
    @return: C{user:<name>} for 1-128 of C{A-Z a-z 0-9 _ . @ -} (the syntax of
        a principal's name), C{user-sha256:<32 hex digits>} otherwise.
    """
    text = name.decode("ascii", "replace")
    if PRINCIPAL_NAME.fullmatch(text):
        return f"user:{text}"
    return f"user-sha256:{hashlib.sha256(name).hexdigest()[:32]}"


class Guard:
    """
    Authentication and rate limits of HTTP requests.

    @ivar authenticator: Checks credentials.
    @ivar limiter: Rate limits, or L{None} for none.
    @ivar metrics: Counts refusals.
    @ivar resource: The RFC 9728 metadata its challenges point to.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        limiter: Limiter | None,
        metrics: GatewayMetrics,
        resource: ProtectedResource | None = None,
        browsers: BrowserSessions | None = None,
    ) -> None:
        """
        @param browsers: The admin dashboard's browser sessions, whose
            cookie is taken as credentials, or L{None}: no cookies.
        """
        self.authenticator = authenticator
        self.browsers = browsers
        self.limiter = limiter
        self.metrics = metrics
        self.resource = resource if resource is not None else ProtectedResource(ServerConfig())
        self._admitted: weakref.WeakKeyDictionary[IRequest, Principal] = weakref.WeakKeyDictionary()
        #: Who another gateway admitted a request it forwarded as
        #: (L{mcpgateway.http.forward.Fleet.principal_of}): credentials were
        #: verified and rate limits counted there.
        self.forwarded: Callable[[IRequest], Principal | None] | None = None

    def principal_of(self, request: IRequest) -> Principal | None:
        """
        @return: Who L{admit} admitted C{request} as, or L{None}.
        """
        return self._admitted.get(request)

    async def admit(self, request: IRequest, group: str, header: bytes | None = None) -> Principal:
        """
        Authenticate C{request} and count it against the rate limit of
        C{group} for its principal.

        @param header: The credentials to check instead of the request's
            C{Authorization} header (the dashboard's login form), or L{None}.
        @return: Who is calling.
        @raise Unauthorized: Without valid credentials (C{WWW-Authenticate} set).
        @raise LimitReached: Over a limit (C{Retry-After} set).
        @raise Forbidden: C{csrf_failed}, for a browser session's request
            that may change something without its CSRF token and origin.
        """
        if header is None and self.forwarded is not None:
            admitted = self.forwarded(request)
            if admitted is not None:
                self._admitted[request] = admitted
                return admitted
        if header is None:
            header = request.getHeader(b"authorization")
            if header is None and self.browsers is not None:
                browser = self.browser(request)
                if browser is not None:
                    return await self.admit_browser(request, group, browser)
        address = client_address(request)
        # A strong bearer token, or a credential verified from this address
        # before: never refused for failures, whoever else caused them.
        authenticator = self.authenticator
        principal = authenticator.recall(header, address)
        if principal is None:
            token = authenticator.jwt(header)
            if token is None:
                principal = await self.verify(request, header, address)
            else:
                principal = await self.verify_jwt(request, token, address)
        await self.limit(request, group, f"principal:{principal.name}", principal)
        self._admitted[request] = principal
        return principal

    def browser(self, request: IRequest) -> BrowserSession | None:
        """
        @return: The live browser session of C{request}'s cookie, or L{None}.
        """
        session_id = cookie_value(request)
        if session_id is None or self.browsers is None:
            return None
        return self.browsers.get(session_id)

    def same_origin(self, request: IRequest) -> bool:
        """
        @return: Whether C{request} carries an C{Origin} header naming the
            gateway itself (as the client reached it, or C{server.public_url}).
        """
        origin = request.getHeader(b"origin")
        if origin is None:
            return False
        return bool(origin.decode("latin-1").strip().rstrip("/").lower() == self.resource.origin(request).lower())

    async def admit_browser(self, request: IRequest, group: str, browser: BrowserSession) -> Principal:
        """
        Admit a request of a logged-in browser: a state-changing one only
        with the session's CSRF token and the gateway's own C{Origin}.

        @raise Forbidden: C{csrf_failed} otherwise.
        @raise LimitReached: Over the principal's rate limit.
        """
        principal = browser.principal
        if request.method not in _SAFE_METHODS:
            token = request.getHeader(CSRF_HEADER)
            if not self.same_origin(request) or not browser.csrf_matches(
                token.decode("latin-1") if token is not None else None
            ):
                origin = (request.getHeader(b"origin") or b"-").decode("latin-1")[:200]
                self.security("csrf_refused", request, principal, origin=origin, token=token is not None)
                raise Forbidden(
                    "refused: a browser session's request that changes something must come from the gateway's"
                    " own page (same Origin, X-CSRF-Token header)",
                    "csrf_failed",
                )
        await self.limit(request, group, f"principal:{principal.name}", principal)
        self._admitted[request] = principal
        return principal

    async def verify(self, request: IRequest, header: bytes | None, address: str) -> Principal:
        """
        Check credentials that L{Authenticator.recall} did not admit, within
        the C{auth_failure} budgets of the address and of the Basic user name.

        @param header: The raw C{Authorization} header, or L{None}.
        @param address: The client's address.
        @return: Who is calling.
        @raise Unauthorized: Without valid credentials.
        @raise LimitReached: When a budget is used up.
        """
        authenticator = self.authenticator
        keys = [f"addr:{address}"]
        if not authenticator.guessable(header):
            # A strong bearer token, checked in full by recall: wrong.  It
            # is counted (scanning shows and uses up the address's budget)
            # but was not refused unchecked.
            await self.refuse(request, keys, "unknown token")
        name = authenticator.user_name(header)
        if name is not None:
            keys.append(user_key(name))
        # A used-up budget refuses before the credentials are checked, so a
        # right guess gains nothing.  A password hash to verify is counted
        # as an attempt first, so a burst of guesses cannot make the gateway
        # hash more than the budget.  The address is counted before the
        # name: names a client makes up are bounded by its address's budget.
        costly = authenticator.costly(header)
        for key in keys:
            await self.limit(request, "auth_failure", key, None, count=costly)
        principal = await authenticator.authenticate(header, address)
        if principal is None:
            await self.refuse(request, [] if costly else keys, "unknown token" if authenticator.bearer(header) else "")
        return principal

    async def verify_jwt(self, request: IRequest, token: bytes, address: str) -> Principal:
        """
        Verify a JWT (L{Authenticator.jwt}): admitted whatever the budgets
        when valid, counted against the address when not (unless its
        issuer's keys could not be had).

        @raise Unauthorized: For a token refused.
        @raise LimitReached: When counting it used the address's budget up.
        """
        tokens = self.authenticator.tokens
        assert tokens is not None  # Authenticator.jwt returns a token only with issuers
        verdict = await tokens.verify(token)
        if verdict.principal is None:
            keys = [f"addr:{address}"] if verdict.counted else []
            await self.refuse(request, keys, verdict.reason, issuer=verdict.issuer or None)
        return verdict.principal

    async def refuse(self, request: IRequest, keys: list[str], token_error: str = "", **fields: Any) -> NoReturn:
        """
        Record wrong or missing credentials, count them for C{keys} in
        C{auth_failure}, and refuse the request.

        @param keys: The budgets not counted yet.
        @param token_error: Why a bearer token was refused, or C{""}.
        @param fields: More details of the security event.
        @raise Unauthorized: With C{WWW-Authenticate}.
        @raise LimitReached: When counting used a budget up.
        """
        self.metrics.auth_failures.inc()
        if token_error:
            fields["reason"] = token_error
        self.security("auth_failure", request, None, **{k: v for k, v in fields.items() if v is not None})
        for key in keys:
            await self.limit(request, "auth_failure", key, None)
        if cookie_value(request) is None or request.getHeader(b"authorization") is not None:
            # (Not to the dashboard's script whose session ended: the browser
            # would open its own login dialog instead of the page's.)
            request.responseHeaders.setRawHeaders(b"WWW-Authenticate", self.resource.challenges(request, token_error))
        raise Unauthorized(
            f"the bearer token is refused: {token_error}" if token_error else "missing or invalid credentials"
        )

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
