"""
Where a session is served: here, or at its owner.

A session's calls are served by the one process that owns it (its children
live there).  L{Placement.owner_for} answers, for a session id, L{None}
("serve it here") or the owner's directory entry, its internal address
and incarnation ("forward it there"):

  - a session this process holds is served here, without asking Redis;
  - otherwise the directory is asked, through a small cache of other
    owners; a first call claims the session (C{SET NX}), so two first calls
    on two processes agree on one owner;
  - a draining process (L{mcpgateway.drain}) claims nothing: it leaves the
    fleet's list of processes that take new sessions, and passes a new
    session on to one of those (it claims the session there), so a client
    whose balancer has not yet noticed the drain never sees it; only with
    no other process does it refuse the session (503 C{draining}).  An MCP
    C{initialize}, which names no session, goes to L{Placement.elsewhere}.  A
    claim whose session was then not opened (the drain began in between,
    or the process is full) is released (L{Placement.abandon});
  - an entry of an earlier process at this process's own address (it died
    and this one started in its place before the entry expired) names a
    session whose children died with it: 503 C{session_lost}, the entry
    removed, as when another gateway finds an owner gone;
  - a I{forwarded} request is never forwarded again (the loop guard): if the
    directory names another owner (the sender's cache was stale),
    L{Misdirected} says which, and the sender asks again once.

The directory is kept up to date from the gateway's own events: a closed
session's entry is released, and every sweep of the session reaper
refreshes this process's entries and counts the fleet.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure

from mcpgateway.cluster.directory import Directory, DirectoryUnavailable, address_of
from mcpgateway.errors import ServiceUnavailable
from mcpgateway.gateway import Gateway
from mcpgateway.observe.logs import logger
from mcpgateway.sessions import Session

__all__ = ["FORWARD_OUTCOMES", "Misdirected", "Placement", "directory_unreachable", "session_lost"]

log = logger("mcpgateway.cluster")

#: Outcomes of C{mcpgateway_forwards_total}.
FORWARD_OUTCOMES = ("answered", "lost", "misdirected")
#: Owners remembered per process before the cache is emptied.
_CACHE_SIZE = 10000


def directory_unreachable(error: BaseException | None) -> None:
    """
    Log that Redis could not be asked (L{DirectoryUnavailable}) where the
    request goes on without it.
    """
    log.warn("the session directory cannot be reached: {error}", error=str(error))


def session_lost(session_id: str) -> ServiceUnavailable:
    """
    @return: The 503 for a session whose owner process is gone.
    """
    return ServiceUnavailable(
        f"session {session_id!r} lived in a gateway process that cannot be reached any more; "
        "its state is lost (a new call starts a new session)",
        "session_lost",
    )


class Misdirected(Exception):
    """
    A forwarded request reached a process that is not the session's owner.

    @ivar owner: The owner the directory names.
    """

    def __init__(self, owner: str) -> None:
        super().__init__(owner)
        self.owner = owner


class Placement:
    """
    This process's view of the session space.

    @ivar worker: This process's worker number (0 when C{server.workers} is 1).
    @ivar fleet_sessions: Sessions in the directory at the last sweep.
    @ivar fleet_instances: Processes taking new sessions (alive, not draining) at the last sweep.
    @ivar forwards: Forwarded requests by outcome (L{FORWARD_OUTCOMES}).
    """

    def __init__(
        self,
        directory: Directory,
        gateway: Gateway,
        worker: int = 0,
        choose: Callable[[list[str]], str] = random.choice,
    ) -> None:
        """
        @param directory: The session directory.
        @param gateway: This process's gateway.
        @param worker: This process's worker number.
        @param choose: Picks the process a draining one passes a new session on to.
        """
        self.directory = directory
        self.gateway = gateway
        self.worker = worker
        self._choose = choose
        self._left = False
        #: New sessions passed on while draining, until their call arrived.
        self._passed: set[str] = set()
        self.fleet_sessions = 0
        self.fleet_instances = 0
        self.forwards = dict.fromkeys(FORWARD_OUTCOMES, 0)
        self._owners: dict[str, str] = {}
        #: Calls under way here per session id (L{calling}).
        self._calling: dict[str, int] = {}
        self._pending: set[Deferred[Any]] = set()
        #: Refreshes under way, and the sessions closed while one was.
        self._refreshing = 0
        self._closed_meanwhile: set[str] = set()
        gateway.session_closed.append(self._closed)
        gateway.swept.append(self.refresh)

    @property
    def address(self) -> str:
        """
        This process's internal address (known once its listener runs).
        """
        return self.directory.address

    async def owner_for(self, session_id: str, *, create: bool, forwarded: bool = False) -> str | None:
        """
        @param session_id: A REST session id or an MCP C{Mcp-Session-Id}.
        @param create: Whether the request may create the session (a tool
            call) or only use one (C{DELETE}, an MCP request after C{initialize}).
        @param forwarded: Whether another gateway forwarded the request.
        @return: L{None} to serve it here, else the owner's entry (its
            address is L{address_of} it).
        @raise Misdirected: If a forwarded request belongs to another owner.
        @raise ServiceUnavailable: C{cluster_unavailable} if Redis cannot be
            asked, C{session_lost} if an earlier process at this address owned it.
        """
        if self.gateway.sessions.get(session_id) is not None:
            return None
        if not forwarded:
            known = self._owners.get(session_id)
            if known is not None:
                return known
        try:
            # A draining process takes no new session: it only looks, and
            # refuses the call itself (503) if nobody owns the session.
            if create and not self.gateway.sessions.refusing:
                owner: str | None = await self.directory.claim(session_id)
            else:
                owner = await self.directory.owner(session_id)
                if owner is None and create and not forwarded:
                    owner = await self._pass_on(session_id)
        except DirectoryUnavailable as error:
            directory_unreachable(error)
            raise ServiceUnavailable(
                "the session directory (Redis) cannot be reached; retry", "cluster_unavailable", retry_after=1
            ) from None
        if owner is None or owner == self.directory.me:
            return None
        if address_of(owner) == self.address:
            await self.lost(session_id, owner, "was an earlier process at this address")
            raise session_lost(session_id)
        if forwarded:
            raise Misdirected(owner)
        if len(self._owners) >= _CACHE_SIZE:
            self._owners.clear()
        self._owners[session_id] = owner
        return owner

    async def elsewhere(self) -> str | None:
        """
        This process drains: choose another that takes new sessions.

        @return: Its address, or L{None} if there is none.
        @raise DirectoryUnavailable: If Redis cannot be asked.
        """
        await self._leave()
        others = [address for address in await self._track(self.directory.instances()) if address != self.address]
        return self._choose(sorted(others)) if others else None

    async def _pass_on(self, session_id: str) -> str | None:
        """
        This process drains: choose another that takes new sessions for
        C{session_id} (it claims the session when the call reaches it).

        @return: Its address, or L{None} if there is none.
        """
        address = await self.elsewhere()
        if address is not None:
            if len(self._passed) >= _CACHE_SIZE:
                self._passed.clear()
            self._passed.add(session_id)
        return address

    async def gone(self, address: str) -> None:
        """
        Nothing listens at C{address} any more (a connection was refused):
        the process there is gone, so no draining process should pass a new
        session on to it; take it off the list (L{Directory.delist}).
        """
        try:
            await self._track(self.directory.delist(address))
        except DirectoryUnavailable as error:
            directory_unreachable(error)

    async def _leave(self) -> None:
        """
        Leave the list of processes that take new sessions, once.
        """
        if not self._left:
            self._left = True
            await self._track(self.directory.leave())

    def passed_on(self, session_id: str) -> bool:
        """
        @return: Whether C{session_id} is a new session this draining
            process passed on (a failure to reach that process is no
            session's loss: nothing lived there yet).
        """
        return session_id in self._passed

    def reached(self, session_id: str) -> None:
        """
        A request of C{session_id} reached the process it was forwarded to:
        if it was a new session passed on, it lives there now.
        """
        self._passed.discard(session_id)

    def forget(self, session_id: str) -> None:
        """
        Drop what this process remembers of C{session_id}'s owner.
        """
        self._owners.pop(session_id, None)
        self._passed.discard(session_id)

    async def lost(self, session_id: str, owner: str, why: str = "cannot be reached") -> None:
        """
        C{owner} is gone: delete C{session_id}'s entry if it still names it.

        @param why: How it is gone, for the log.
        """
        self.forget(session_id)
        try:
            if await self._track(self.directory.release(session_id, owner)):
                log.warn("session {id}: its owner {owner} {why}; entry removed", id=session_id, owner=owner, why=why)
        except DirectoryUnavailable as error:
            directory_unreachable(error)

    async def claim(self, session_id: str) -> None:
        """
        Record a session created here without a call (an MCP C{initialize}).
        """
        try:
            await self._track(self.directory.claim(session_id))
        except DirectoryUnavailable as error:
            directory_unreachable(error)
            raise ServiceUnavailable(
                "the session directory (Redis) cannot be reached; retry", "cluster_unavailable", retry_after=1
            ) from None

    @contextmanager
    def calling(self, session_id: str) -> Iterator[None]:
        """
        A call that may open C{session_id} here is under way (from before
        its claim to its answer): L{abandon} releases no claim another such
        call may still open a session for.
        """
        self._calling[session_id] = self._calling.get(session_id, 0) + 1
        try:
            yield
        finally:
            left = self._calling.pop(session_id) - 1
            if left:
                self._calling[session_id] = left

    def _opening(self, session_id: str, asking: int = 0) -> bool:
        """
        @param asking: Calls of C{session_id} under way that ask (an abandoning one: 1).
        @return: Whether C{session_id} lives here, or another call that may
            open it here is under way.
        """
        return self.gateway.sessions.get(session_id) is not None or self._calling.get(session_id, 0) > asking

    async def abandon(self, session_id: str) -> None:
        """
        A call that was to open C{session_id} here failed before it did (the
        process began to drain or is full after the call claimed it): release
        that claim, so that a retry on another process opens the session
        there rather than being forwarded here to be refused again (and
        called lost once this process is gone).  Nothing if the session
        lives here or another call of it is under way here (L{calling}: two
        first calls of one session, one refused); if one opened it while the
        release was on its way, the session is entered again.
        """
        if self._opening(session_id, asking=1):
            return
        self.forget(session_id)
        try:
            if await self._track(self.directory.release(session_id)) and self._opening(session_id, asking=1):
                await self._track(self.directory.claim(session_id))
        except DirectoryUnavailable as error:
            directory_unreachable(error)

    def refresh(self) -> None:
        """
        Renew this process's entries and count the fleet (each reaper sweep).
        """

        def counted(counts: tuple[int, int]) -> None:
            self.fleet_sessions, self.fleet_instances = counts

        listed = not self.gateway.sessions.refusing
        if not listed:
            Deferred.fromCoroutine(self._leave()).addErrback(self._failed)
        self._refreshing += 1
        refreshing = self.directory.refresh([session.id for session in self.gateway.sessions], listed)
        self._track(refreshing.addBoth(self._refreshed)).addCallbacks(counted, self._failed)

    def _refreshed(self, outcome: object) -> object:
        """
        A refresh is done.  It named the sessions held when it was sent, and
        it writes an entry it finds missing again (Redis lost it), so the
        release of one that closed meanwhile may have run before it in the
        thread pool and been undone: release those again, unless they live
        here again or a call may open them here.
        """
        self._refreshing -= 1
        if not self._refreshing:
            closed, self._closed_meanwhile = self._closed_meanwhile, set()
            for session_id in closed:
                if not self._opening(session_id):
                    self._track(self.directory.release(session_id)).addErrback(self._failed)
        return outcome

    def _closed(self, session: Session) -> None:
        self.forget(session.id)
        if self._refreshing:
            self._closed_meanwhile.add(session.id)
        self._track(self.directory.release(session.id)).addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        if failure.check(DirectoryUnavailable):
            directory_unreachable(failure.value)
        else:
            log.failure("updating the session directory", failure)

    def _track(self, d: Deferred[Any]) -> Deferred[Any]:
        self._pending.add(d)

        def done(result: object) -> object:
            self._pending.discard(d)
            return result

        return d.addBoth(done)

    async def stop(self) -> None:
        """
        Wait for the directory updates under way (the gateway has closed its
        sessions), leave the fleet and disconnect.
        """
        while self._pending:  # (a refresh that ends may send releases)
            await gatherResults([d.addErrback(lambda _: None) for d in list(self._pending)])
        try:
            await self.directory.leave()
        except DirectoryUnavailable as error:
            directory_unreachable(error)
        self.directory.close()

    def collector(self) -> Collector:
        """
        @return: The fleet's metrics, read at scrape time.
        """
        return _FleetCollector(self)


class _FleetCollector(Collector):
    def __init__(self, placement: Placement) -> None:
        self.placement = placement

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        placement = self.placement
        info = GaugeMetricFamily(
            "mcpgateway_instance_info",
            "This process: its internal address and worker number.",
            labels=["address", "worker"],
        )
        info.add_metric([placement.address, str(placement.worker)], 1)
        yield info
        yield GaugeMetricFamily(
            "mcpgateway_fleet_sessions",
            "Sessions of every gateway process, from the directory (at the last reaper sweep).",
            value=placement.fleet_sessions,
        )
        yield GaugeMetricFamily(
            "mcpgateway_fleet_instances",
            "Gateway processes taking new sessions (alive, not draining), from the directory (at the last sweep).",
            value=placement.fleet_instances,
        )
        forwards = CounterMetricFamily(
            "mcpgateway_forwards",
            "Requests forwarded to a session's owner, by outcome (answered, lost, misdirected).",
            labels=["outcome"],
        )
        for outcome, count in placement.forwards.items():
            forwards.add_metric([outcome], count)
        yield forwards
