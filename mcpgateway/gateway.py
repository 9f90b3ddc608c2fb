"""
The gateway's operations as plain method calls: list services and tools,
call a tool in a session, list and close sessions.  It knows nothing of HTTP
beyond the status carried by its L{GatewayError}s.

A call's path: L{Gateway.call_tool} opens (or finds) the session, reserves
the per-service limit before any spawn, gets the session's child for the
service (concurrent first calls share one start), sends C{tools/call} with a
timeout, and maps what comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, ensureDeferred, gatherResults
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from mcpgateway import __version__
from mcpgateway.children.child import Child
from mcpgateway.children.sandbox import sandbox_capabilities
from mcpgateway.children.service import Service
from mcpgateway.config import GatewayConfig
from mcpgateway.errors import (
    CallTimedOut,
    ChildFailed,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    SessionClosed,
    ToolRPCError,
)
from mcpgateway.lib.deferreds import observe
from mcpgateway.mcp.exits import ChildExited, Unreachable
from mcpgateway.mcp.jsonrpc import RPCError
from mcpgateway.mcp.results import result_text
from mcpgateway.observe.logs import logger, now_iso
from mcpgateway.policy.auth import Principal
from mcpgateway.policy.credentials import Credentials
from mcpgateway.sessions import Session, SessionRegistry

__all__ = ["Gateway"]

log = logger(__name__)


class Gateway:
    """
    The services, the sessions, and the reaper that expires idle sessions.
    """

    def __init__(
        self,
        config: GatewayConfig,
        reactor: IReactorProcess,
        clock: IReactorTime,
        credentials: Credentials | None = None,
    ) -> None:
        """
        @param config: The configuration.
        @param reactor: Spawns children.
        @param clock: All timing (timeouts, expiry, backoff) goes through it.
        @param credentials: The per-principal credentials; loaded from
            C{config} now (blocking) if L{None}, and then forgotten by L{stop}.
        @raise ConfigError: If C{credentials} is L{None} and the secrets
            cannot be loaded.
        """
        self.config = config
        self.clock = clock
        self.credentials = credentials if credentials is not None else Credentials.from_config(config)
        #: Whether L{stop} forgets the secrets (only those it loaded: the
        #: twistd service's audit log still writes, redacted, after the stop).
        self._owns_credentials = credentials is None
        secrets = tuple(secret for secret in (config.server.auth_password, config.server.auth_token) if secret)
        self.services = {
            name: Service(service, reactor, clock, config.session.sandbox_dir, secrets=secrets)
            for name, service in config.services.items()
            if service.enabled
        }
        self.sessions = SessionRegistry(config.session)
        for service in self.services.values():
            service.pool_room = self._pool_room(service)
            service.hidden_values = self.credentials.hidden
            service.listing_env = self._listing_env(service.name)
            service.listing_headers = self._listing_headers(service.name)
        self._reaper = LoopingCall(self.sweep)
        self._reaper.clock = clock
        self._closing: set[Deferred[None]] = set()
        self._stopping = False
        #: Told of each session as it closes (DELETE, expiry, stop), e.g. by
        #: the MCP front door to end the session's streams.
        self.session_closed: list[Callable[[Session], None]] = []
        #: Called after each sweep of the reaper, e.g. to refresh the
        #: cluster's session directory (L{mcpgateway.cluster.placement}).
        self.swept: list[Callable[[], None]] = []
        self.restarts: dict[str, int] = {}

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """
        Start the reaper and fill the warm pools.
        """
        self._reaper.start(self.config.session.cleanup_interval, now=False).addErrback(
            lambda failure: log.failure("the session reaper stopped", failure)
        )
        log.info("sandbox on this machine: {capabilities}", capabilities=sandbox_capabilities())
        for service in self.services.values():
            service.refill_pool()

    def _listing_env(self, name: str) -> Callable[[], Mapping[str, str]]:
        """
        A tool lister child is nobody's: it gets the C{default} credential only.
        """
        return lambda: self.credentials.for_listing(name).env

    def _listing_headers(self, name: str) -> Callable[[], Mapping[str, str]]:
        """
        A url service's tool listing session is nobody's too: the C{default} credential's headers.
        """
        return lambda: self.credentials.for_listing(name).headers

    def _pool_room(self, service: Service) -> Callable[[], bool]:
        """
        Pool children count against C{max_sessions_per_service}; a draining
        gateway (new sessions refused) keeps no pool.
        """
        limit = self.config.session.max_sessions_per_service

        def room() -> bool:
            if self.sessions.refusing:
                return False
            holding = sum(1 for session in self.sessions if session.holds(service.name))
            return holding + service.pool_pending + 1 <= limit

        return room

    async def stop(self) -> None:
        """
        Close every session and every child; fires once all have been reaped.
        """
        self._stopping = True
        if self._reaper.running:
            self._reaper.stop()
        # Services first: they stop refilling pools and close every child they have.
        stopping = [ensureDeferred(service.stop()) for service in self.services.values()]
        for session in self.sessions:
            self._close(session)
        await gatherResults(list(self._closing))
        await gatherResults(stopping)
        if self._owns_credentials:
            self.credentials.stop()

    def sweep(self) -> None:
        """
        Close the sessions idle past their timeout; never waits for them.
        """
        for session in self.sessions.expired(self.clock.seconds()):
            log.info("session {id} expired after {t:g} s idle", id=session.id, t=session.timeout)
            try:
                self._close(session)
            except Exception:  # one bad session must not stop the reaper
                log.failure("closing expired session {id}", id=session.id)
        for listener in list(self.swept):
            try:
                listener()
            except Exception:
                log.failure("a swept listener failed")

    # -- services and tools ---------------------------------------------------

    def health(self) -> dict[str, Any]:
        """
        @return: The C{GET /health} body: C{status} is C{healthy}, or
            C{draining} once new sessions are refused (L{mcpgateway.drain}).
        """
        status = "draining" if self.sessions.refusing else "healthy"
        return {"status": status, "timestamp": now_iso(self.clock.seconds()), "version": __version__}

    def list_services(self) -> dict[str, Any]:
        """
        @return: Each enabled service's public view, keyed by name.
        """
        return {name: service.describe() for name, service in self.services.items()}

    def service_status(self) -> dict[str, Any]:
        """
        @return: Each enabled service's admin view (L{Service.status}) with
            C{restarts}: sessions whose child of it was replaced.
        """
        return {
            name: {**service.status(), "restarts": self.restarts.get(name, 0)}
            for name, service in self.services.items()
        }

    def restart_service(self, name: str) -> dict[str, Any]:
        """
        Restart service C{name}'s children: every session's child of it is
        closed (a call in flight on it fails with C{child_failed}), and the
        session's next call to the service starts a fresh child and answers
        C{session_restarted: true}, as after a crash; the warm pool is
        emptied and refilled and the backoff forgotten.  Sessions stay open,
        except one whose call failed (as after a crash during a call, it is
        forgotten if it holds no other child).

        @return: The C{POST /admin/services/<name>/restart} body.
        @raise NotFound: If C{name} is no enabled service.
        """
        service = self.service(name)
        closed = 0
        for session in self.sessions:
            child = session.children.pop(name, None)
            if child is not None:
                session.restarted.add(name)
                self._closing_child(child, name)
                closed += 1
        pooled = service.recycle()
        log.info("{service}: restarted by an admin ({n} session children closed)", service=name, n=closed)
        return {"service": name, "session_children_closed": closed, "pool_children_closed": pooled}

    def shows_stderr(self, principal: Principal, service: object) -> bool:
        """
        Whether C{principal} may see a child's stderr tail in an error of
        C{service} (its C{stderr_tail} setting: C{admins}, the default, C{all}
        or C{none}); a child's stderr may hold what it should not tell.
        """
        known = self.services.get(service) if isinstance(service, str) else None
        setting = known.config.stderr_tail if known is not None else "admins"
        return setting == "all" or (setting == "admins" and principal.admin)

    def service(self, name: str) -> Service:
        """
        @raise NotFound: If C{name} is no enabled service.
        """
        service = self.services.get(name)
        if service is None:
            raise NotFound(f"no service named {name!r}", "service_not_found")
        return service

    async def list_tools(self, name: str) -> dict[str, Any]:
        """
        @return: The C{GET /services/<name>/tools} body.
        """
        tools = await self.service(name).tools()
        return {"service": name, "tools": tools}

    # -- calls -------------------------------------------------------------------

    async def call_tool(
        self,
        name: str,
        tool: str,
        session_id: str,
        arguments: dict[str, Any],
        timeout: float,
        metadata: dict[str, Any],
        principal: Principal,
        meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """
        Call C{tool} of service C{name} in session C{session_id}.

        @param timeout: The session's idle timeout, in seconds.
        @param principal: The caller; it owns a session it creates, and a
            non-admin cannot use another's.
        @param meta: C{params._meta} entries for the child (e.g. C{traceparent}).
        @return: The C{POST /services/<name>/call} body.
        @raise GatewayError: With the status and code for what went wrong.
        """
        service = self.service(name)
        session = self.sessions.open(session_id, principal, self.clock.seconds(), timeout, metadata)
        try:
            child, restarted = await self._child_for(session, service, principal)
            try:
                result = await session.track(
                    child.call_tool(tool, arguments, meta).addTimeout(service.config.call_timeout, self.clock)
                )
            except RPCError as error:
                raise ToolRPCError(
                    f"{name} answered with JSON-RPC error {error.code}: {error.message}",
                    mcp_code=error.code,
                    mcp_data=error.data,
                ) from None
            except TimeoutError:
                raise CallTimedOut(
                    f"{name} did not answer {tool!r} within {service.config.call_timeout:g} s; the call was cancelled"
                ) from None
            except Unreachable as error:
                raise _unreachable(service, error) from None
            except ChildExited as error:
                raise ChildFailed.ended(name, "during the call", error.info) from None
        except CancelledError:
            if self._stopping or session.stopped:
                raise ServiceUnavailable("the gateway is shutting down; retry", retry_after=1) from None
            if session.closed:
                raise SessionClosed(f"session {session_id!r} was closed during the call") from None
            raise
        finally:
            session.last_accessed = self.clock.seconds()
            self.sessions.discard_if_empty(session)
        answer: dict[str, Any] = {
            "session_id": session_id,
            "service": name,
            "tool": tool,
            "result": result_text(result),
            "is_error": result.get("isError") is True,
            "content": result.get("content", []),
            "session_restarted": restarted,
        }
        if "structuredContent" in result:
            answer["structured_content"] = result["structuredContent"]
        return answer

    async def _child_for(self, session: Session, service: Service, principal: Principal) -> tuple[Child, bool]:
        """
        The session's live child of C{service}, starting one if needed.

        A service with per-principal credentials runs its children with
        their session owner's credential: only the owner may call it in the
        session (an admin may use another's session, never its credential).

        @return: The child, and whether it replaces one that died.
        @raise Forbidden: C{no_credential} if the service has per-principal
            credentials and C{principal} has none or does not own the session.
        """
        name = service.name
        if session.closed:
            raise SessionClosed(f"session {session.id!r} was closed")
        personal = self.credentials.applies(name)
        if personal and principal.name != session.owner:
            raise Forbidden(
                f"service {name!r} runs with its callers' own credentials: in session {session.id!r}, "
                f"which belongs to {session.owner}, only {session.owner} may call it",
                "no_credential",
                service=name,
            )
        child = session.children.get(name)
        if child is not None:
            if child.alive:
                return child, False
            del session.children[name]
            session.restarted.add(name)
        shared = session.spawning.get(name)
        if shared is None:
            self.sessions.reserve(session, name)
            # The owner's own credential (no_credential if none), never a pooled child:
            # environment variables for a child, headers for a url service's session.
            credential = self.credentials.for_principal(name, principal) if personal else None
            shared = session.spawning[name] = observe(
                service.acquire(
                    credential.env if credential is not None else None,
                    credential.headers if credential is not None else None,
                )
            )
            shared.wait().addBoth(self._spawned, session, name)
            service.refill_pool_soon()
        child = await session.track(shared.wait())
        restarted = name in session.restarted
        if restarted:
            session.restarted.discard(name)
            self.restarts[name] = self.restarts.get(name, 0) + 1
        return child, restarted

    def _spawned(self, outcome: Child | Failure, session: Session, name: str) -> None:
        session.spawning.pop(name, None)
        if isinstance(outcome, Failure):
            # The caller may have gone already (its own cleanup saw the
            # start still under way): do not leave an empty session behind.
            self.sessions.discard_if_empty(session)
            return
        if session.closed:
            self._closing_child(outcome, name)
            return
        session.children[name] = outcome
        outcome.when_ended().addCallback(self._child_ended, session, name, outcome)

    def _child_ended(self, info: object, session: Session, name: str, child: Child) -> None:
        if session.children.get(name) is child:
            del session.children[name]
            if not session.closed:
                session.restarted.add(name)

    # -- sessions ------------------------------------------------------------------

    def list_sessions(self, principal: Principal) -> dict[str, Any]:
        """
        @param principal: The caller: an admin sees every session, an agent its own.
        @return: The C{GET /sessions} body, keyed by session id.
        """
        now = self.clock.seconds()
        return {session.id: session.describe(now) for session in self.sessions.visible_to(principal)}

    def close_session(self, session_id: str, principal: Principal) -> dict[str, Any]:
        """
        Close a session now: its calls in flight fail at once with
        L{SessionClosed}; its children are stopped in the background.

        @param principal: The caller (an agent may close only its own sessions).
        @raise NotFound: If there is no such session visible to C{principal}.
        """
        session = self.sessions.get(session_id, principal)
        if session is None:
            raise NotFound(f"no session {session_id!r}", "session_not_found")
        self._close(session)
        return {"message": "session closed", "session_id": session_id}

    def open_session(self, session_id: str, principal: Principal, timeout: float, metadata: dict[str, Any]) -> Session:
        """
        Find or create session C{session_id} (as C{call_tool} does) and mark it used now.

        @raise NotFound: If it belongs to another principal.
        @raise LimitReached: If creating it would exceed C{max_total_sessions}.
        """
        return self.sessions.open(session_id, principal, self.clock.seconds(), timeout, metadata)

    async def child_for(self, session: Session, name: str, principal: Principal) -> tuple[Child, bool]:
        """
        The session's live child of service C{name}, starting one if needed,
        under the same limits as a REST call.

        @param principal: The caller (its credential, if the service has
            per-principal credentials).
        @return: The child, and whether it replaces one that died.
        @raise NotFound: If C{name} is no enabled service.
        @raise Forbidden: C{no_credential}, as for a REST call.
        """
        return await self._child_for(session, self.service(name), principal)

    def close_sessions(self) -> int:
        """
        Close every live session now, as L{close_session} does one, except
        that their calls cut short are answered as at a stop (503, retry).

        @return: How many were closed.
        """
        sessions = list(self.sessions)
        for session in sessions:
            session.stopped = True
            self._close(session)
        return len(sessions)

    def _close(self, session: Session) -> None:
        session.closed = True
        self.sessions.remove(session)
        for listener in list(self.session_closed):
            try:
                listener(session)
            except Exception:
                log.failure("a session_closed listener failed for session {id}", id=session.id)
        for waiting in list(session.calls):
            waiting.cancel()
        for name, child in list(session.children.items()):
            self._closing_child(child, name)
        session.children.clear()
        for service in self.services.values():
            service.refill_pool()

    def _closing_child(self, child: Child, name: str) -> None:
        grace = self.services[name].config.close_grace
        closing: Deferred[None] = child.close(grace).addCallback(lambda _: None)
        self._closing.add(closing)
        closing.addBoth(lambda result: self._closing.discard(closing))


def _unreachable(service: Service, error: Unreachable) -> ServiceUnavailable:
    """
    A remote server that could not be reached for a call: the call never
    left the gateway, so 503 (a retry is safe), as for a start that fails.
    """
    return ServiceUnavailable(
        f"the {service.name} server {error.info.describe()}; the call was not sent",
        retry_after=service.config.backoff_initial,
        service=service.name,
    )
