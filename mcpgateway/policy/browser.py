"""
Browser sessions of the admin dashboard, kept in memory, server side.

A browser logs in once with a principal's credential (checked as the API
checks an C{Authorization} header) and gets an opaque, random session id in
a cookie; the id stands for the principal until the session has been idle
for C{idle} seconds, is C{lifetime} seconds old, or is ended (logout).
Each session has its own CSRF token, which every state-changing request
made with the cookie must repeat in a header.  Only a hash of the id is
kept, so the table does not hold usable credentials.

Sessions live in this process only: a restart logs every browser out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from mcpgateway.policy.auth import Principal

__all__ = ["DEFAULT_IDLE", "DEFAULT_LIFETIME", "MAX_SESSIONS", "BrowserSession", "BrowserSessions"]

#: Seconds a browser session may stay unused.
DEFAULT_IDLE = 30 * 60.0
#: Seconds a browser session lasts at most, used or not.
DEFAULT_LIFETIME = 12 * 3600.0
#: Browser sessions kept at once; the least recently used is ended first.
MAX_SESSIONS = 1000


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).digest()


@dataclass
class BrowserSession:
    """
    One logged-in browser.

    @ivar principal: Who logged in.
    @ivar csrf: The token its state-changing requests must carry.
    @ivar created: When it logged in (the clock's time).
    @ivar used: When it was last used.
    """

    principal: Principal
    csrf: str
    created: float
    used: float

    def csrf_matches(self, token: str | None) -> bool:
        """
        @param token: What a request carried, or L{None}.
        @return: Whether it is this session's CSRF token (constant time).
        """
        return token is not None and hmac.compare_digest(token.encode("utf-8", "replace"), self.csrf.encode())


class BrowserSessions:
    """
    The logged-in browsers.

    @ivar idle: Seconds a session may stay unused.
    @ivar lifetime: Seconds a session lasts at most.
    """

    def __init__(
        self,
        clock: IReactorTime,
        idle: float = DEFAULT_IDLE,
        lifetime: float = DEFAULT_LIFETIME,
        limit: int = MAX_SESSIONS,
    ) -> None:
        self.clock = clock
        self.idle = idle
        self.lifetime = lifetime
        self._limit = limit
        self._sessions: dict[bytes, BrowserSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, principal: Principal) -> tuple[str, BrowserSession]:
        """
        Log C{principal} in.

        @return: The new session's id (for the cookie) and the session.
        """
        self._expire()
        while len(self._sessions) >= self._limit:
            oldest = min(self._sessions, key=lambda key: self._sessions[key].used)
            del self._sessions[oldest]
        now = self.clock.seconds()
        session_id = secrets.token_urlsafe(32)
        session = BrowserSession(principal, secrets.token_urlsafe(32), now, now)
        self._sessions[_digest(session_id)] = session
        return session_id, session

    def get(self, session_id: str) -> BrowserSession | None:
        """
        The live session of C{session_id}, marked used now.

        @return: It, or L{None} if unknown, ended or expired (then forgotten).
        """
        key = _digest(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock.seconds()
        if now - session.used > self.idle or now - session.created > self.lifetime:
            del self._sessions[key]
            return None
        session.used = now
        return session

    def end(self, session_id: str) -> bool:
        """
        Log a browser out.

        @return: Whether there was such a session.
        """
        return self._sessions.pop(_digest(session_id), None) is not None

    def _expire(self) -> None:
        now = self.clock.seconds()
        for key, session in list(self._sessions.items()):
            if now - session.used > self.idle or now - session.created > self.lifetime:
                del self._sessions[key]
