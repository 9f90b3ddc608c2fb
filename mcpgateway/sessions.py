"""
Sessions: one per caller-chosen id (a phone call), holding one child per
service it has used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import Deferred

from mcpgateway.children.child import Child
from mcpgateway.config import SessionConfig
from mcpgateway.errors import LimitReached, NotFound, ServiceUnavailable
from mcpgateway.lib.deferreds import Shared
from mcpgateway.observe.logs import now_iso
from mcpgateway.policy.auth import Principal

__all__ = ["Session", "SessionRegistry"]


class Session:
    """
    One session's state.

    @ivar children: The live child of each service the session used.
    @ivar spawning: Starts under way, shared by concurrent first calls.
    @ivar calls: The L{Deferred}s its calls are waiting on, cancelled when it closes.
    @ivar restarted: Services whose child died; their next call says so.
    @ivar owner: The principal that created it.
    @ivar stopped: Whether the gateway closed it (a stop, a drain's
        deadline) rather than its client: its calls cut short may be retried.
    """

    def __init__(self, session_id: str, owner: str, now: float, timeout: float, metadata: dict[str, Any]) -> None:
        self.id = session_id
        self.owner = owner
        self.created_at = now
        self.last_accessed = now
        self.timeout = timeout
        self.metadata = metadata
        self.children: dict[str, Child] = {}
        self.spawning: dict[str, Shared[Child]] = {}
        self.calls: set[Deferred[Any]] = set()
        self.restarted: set[str] = set()
        self.closed = False
        self.stopped = False

    @property
    def busy(self) -> bool:
        """
        @return: Whether a call or a start is under way.
        """
        return bool(self.calls or self.spawning)

    def holds(self, service: str) -> bool:
        """
        @param service: A service name.
        @return: Whether this session has, or is starting, a child of it.
        """
        return service in self.children or service in self.spawning

    def track(self, d: Deferred[Any]) -> Deferred[Any]:
        """
        Remember C{d} as something a call of this session waits on.

        @param d: The awaited L{Deferred}.
        @return: C{d}.
        """
        self.calls.add(d)

        def untrack(result: object) -> object:
            self.calls.discard(d)
            return result

        d.addBoth(untrack)
        return d

    def describe(self, now: float) -> dict[str, Any]:
        """
        @param now: The clock's time.
        @return: The public view for C{GET /sessions}.
        """
        return {
            "created_at": now_iso(self.created_at),
            "last_accessed": now_iso(self.last_accessed),
            "timeout": self.timeout,
            "time_remaining": round(max(0.0, self.last_accessed + self.timeout - now), 3),
            "metadata": self.metadata,
            "owner": self.owner,
            "services": sorted(self.children),
            "service_name": next(iter(sorted(self.children)), None),
        }


class SessionRegistry:
    """
    The live sessions and the limits on them.

    @ivar refusing: Whether new sessions are refused (the process drains):
        L{open} of an unknown id raises L{ServiceUnavailable} C{draining}.
    """

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self._sessions: dict[str, Session] = {}
        self.refusing = False
        self._emptied: list[Deferred[None]] = []

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def get(self, session_id: str, principal: Principal | None = None) -> Session | None:
        """
        @param session_id: The id.
        @param principal: Who asks; a session of another owner is invisible
            to a non-admin.  L{None} sees everything.
        @return: The live session, or L{None}.
        """
        session = self._sessions.get(session_id)
        if session is not None and principal is not None and not visible(session, principal):
            return None
        return session

    def visible_to(self, principal: Principal) -> list[Session]:
        """
        @return: The sessions C{principal} may see.
        """
        return [s for s in self._sessions.values() if visible(s, principal)]

    def open(
        self, session_id: str, principal: Principal, now: float, timeout: float, metadata: dict[str, Any]
    ) -> Session:
        """
        Find or create the session C{session_id} and mark it used now.

        @raise NotFound: If it belongs to another principal and C{principal} is no admin.
        @raise LimitReached: If creating it would exceed C{max_total_sessions}.
        """
        session = self._sessions.get(session_id)
        if session is not None and not visible(session, principal):
            raise NotFound(f"no session {session_id!r}", "session_not_found")
        if session is None:
            if self.refusing:
                raise ServiceUnavailable(
                    "this gateway is draining and takes no new session; retry (the balancer sends it elsewhere)",
                    "draining",
                    retry_after=1,
                )
            if len(self._sessions) >= self.config.max_total_sessions:
                raise LimitReached(
                    f"the gateway holds its maximum of {self.config.max_total_sessions} sessions",
                    "session_limit",
                    retry_after=1,
                )
            session = self._sessions[session_id] = Session(session_id, principal.name, now, timeout, metadata)
        else:
            session.timeout = timeout
            if metadata:
                session.metadata = metadata
        session.last_accessed = now
        return session

    def reserve(self, session: Session, service: str) -> None:
        """
        Check that C{session} may start a child of C{service}.

        @raise LimitReached: If C{max_sessions_per_service} sessions already hold one.
        """
        holding = sum(1 for other in self._sessions.values() if other.holds(service))
        if holding >= self.config.max_sessions_per_service:
            raise LimitReached(
                f"service {service!r} serves its maximum of {self.config.max_sessions_per_service} sessions",
                "session_limit",
                retry_after=1,
            )

    def remove(self, session: Session) -> None:
        """
        Forget C{session} (its children are the caller's to close).
        """
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]
            if not self._sessions:
                emptied, self._emptied = self._emptied, []
                for waiter in emptied:
                    waiter.callback(None)

    def when_empty(self) -> Deferred[None]:
        """
        @return: Fires once no session is left (at once if none is).
        """
        waiter: Deferred[None] = Deferred(lambda d: self._emptied.remove(d) if d in self._emptied else None)
        if not self._sessions:
            waiter.callback(None)
        else:
            self._emptied.append(waiter)
        return waiter

    def discard_if_empty(self, session: Session) -> None:
        """
        Forget C{session} if it holds nothing and nothing is under way, so a
        session whose first call failed neither leaks nor counts against limits.
        """
        if not session.children and not session.busy:
            self.remove(session)

    def expired(self, now: float) -> list[Session]:
        """
        @return: Idle sessions past their timeout (never one with a call in flight).
        """
        return [s for s in self._sessions.values() if not s.busy and now - s.last_accessed > s.timeout]


def visible(session: Session, principal: Principal) -> bool:
    """
    @return: Whether C{principal} may use, see and close C{session}.
    """
    return principal.admin or session.owner == principal.name
