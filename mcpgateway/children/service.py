"""
A configured MCP service: how to start its children, whether it is healthy,
which era it speaks, its warm pool (L{mcpgateway.children.pool}), how its
children ended (L{mcpgateway.children.ends}), their directories
(L{mcpgateway.children.workdirs}) and its cached tool list
(L{mcpgateway.children.tools}).

Start failures are retried with exponential backoff and jitter
(L{mcpgateway.children.backoff}): while a service is backing off,
L{Service.spawn} fails at once with L{ServiceUnavailable} (and a
C{Retry-After}) instead of spawning again.  A child that stays up for
C{backoff_reset} seconds clears the failure count.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Collection, Mapping
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime

from mcpgateway.children.backoff import StartBackoff, credential_key
from mcpgateway.children.child import LEGACY, MODERN, Child, Era, StartFailed, spawn_child
from mcpgateway.children.ends import ChildEnds
from mcpgateway.children.pool import POOL_REFILL_DELAY, WarmPool
from mcpgateway.children.remote import RemoteClient, open_remote
from mcpgateway.children.sandbox import Launch, build_launch
from mcpgateway.children.tools import ToolCache
from mcpgateway.children.workdirs import WorkDirs
from mcpgateway.config import ServiceConfig
from mcpgateway.errors import ChildFailed, ServiceUnavailable
from mcpgateway.lib.redact import SECRET_VALUES
from mcpgateway.mcp.exits import ExitInfo
from mcpgateway.mcp.peer import Peer
from mcpgateway.mcp.remote import HttpPeer
from mcpgateway.mcp.stdio import ChildProtocol
from mcpgateway.observe.logs import logger

__all__ = ["Service"]

log = logger("mcpgateway.service")


class Service:
    """
    Everything the gateway knows about one configured service.

    @ivar config: Its L{ServiceConfig}.
    @ivar era: The era its children speak, once one has started.
    @ivar children: Its live children (sessions' and the tool lister).
    @ivar spawns: Children started so far (successfully or not).
    @ivar backoff: Its L{StartBackoff} (the failed starts).
    @ivar pool: Its L{WarmPool}.
    @ivar ends: Its L{ChildEnds} (crashes, sandbox-limit stops).
    @ivar pool_room: Whether the warm pool may grow now (the gateway counts
        pool children against the session limits).
    @ivar on_handshake: Told each successful start's spawn-to-ready seconds.
    @ivar hidden_values: The values no child may get from its inherited or
        configured environment (the loaded secrets: a child gets one only as
        its principal's credential).
    @ivar listing_env: The credential variables of a child started only to
        list the tools (no principal's).
    @ivar listing_headers: The same for a C{url} service's listing session:
        its credential headers.
    """

    def __init__(
        self,
        config: ServiceConfig,
        reactor: IReactorProcess,
        clock: IReactorTime,
        sandbox_dir: str,
        random_source: Callable[[], float] = random.random,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.name = config.name
        self._reactor = reactor
        self._clock = clock
        self._dirs = WorkDirs(sandbox_dir, config.name, config.sandbox)
        self._secrets = secrets
        self.era: Era | None = {"legacy": LEGACY, "modern": MODERN}.get(config.protocol)
        self.spawns = 0
        self._started_once = False
        self.children: set[Child] = set()
        self.backoff = StartBackoff(config, clock, random_source)
        self._starting = 0
        #: The tool list its children declare, fetched once and shared.
        self.tool_cache = ToolCache(
            config, self._ready_child, lambda: self.spawn(self.listing_env(), self.listing_headers())
        )
        self._stable_timers: dict[Child, IDelayedCall] = {}
        self._stopping = False
        self.ends = ChildEnds(config)
        self.pool_room: Callable[[], bool] = lambda: True
        self.pool = WarmPool(
            config, clock, lambda: ensureDeferred(self.spawn()), lambda: self.pool_room(), self.backoff
        )
        self.on_handshake: Callable[[float], None] | None = None
        self.hidden_values: Callable[[], Collection[str]] = tuple
        self.listing_env: Callable[[], Mapping[str, str]] = dict
        self.listing_headers: Callable[[], Mapping[str, str]] = dict
        self._starting_protocols: set[Peer] = set()
        #: A url service's HTTP client (its connection pool), made at its first session.
        self._remote: RemoteClient | None = None

    @property
    def transport(self) -> str:
        """
        @return: C{"http"} for a C{url} service, else C{"stdio"}.
        """
        return "http" if self.config.url else "stdio"

    # -- state ---------------------------------------------------------------

    @property
    def failures(self) -> int:
        """
        @return: Consecutive start failures (of the service, not of a
            caller's own credential: those back off apart).
        """
        return self.backoff.failures

    @failures.setter
    def failures(self, count: int) -> None:
        """
        Set the consecutive start failures (0: the next start is tried at once).
        """
        self.backoff.failures = count

    @property
    def last_failure(self) -> ServiceUnavailable | None:
        """
        @return: The last start failure's L{ServiceUnavailable}.
        """
        return self.backoff.last_failure

    @property
    def start_failures(self) -> int:
        """
        @return: Failed starts so far.
        """
        return self.backoff.start_failures

    @property
    def crashes(self) -> int:
        """
        @return: Children that ended without the gateway asking them to.
        """
        return self.ends.crashes

    @property
    def limit_stops(self) -> Mapping[str, int]:
        """
        @return: Children stopped by a sandbox limit, by limit (C{pids}, C{cpu}, ...).
        """
        return self.ends.limit_stops

    @property
    def state(self) -> str:
        """
        @return: C{"failing"} while backing off after start failures,
            C{"starting"} while a first child starts, C{"ready"} once one
            has started, else C{"idle"}.
        """
        if self.backoff.failing:
            return "failing"
        if self._starting and not self._started_once:
            return "starting"
        return "ready" if self._started_once else "idle"

    def describe(self) -> dict[str, Any]:
        """
        @return: The public view for C{GET /services} (never the command line).
        """
        view: dict[str, Any] = {
            "description": self.config.description,
            "enabled": self.config.enabled,
            "state": self.state,
            "protocol": self.era.name if self._started_once and self.era else None,
            "transport": self.transport,
            "children": len(self.children),
        }
        if self.state == "failing" and self.backoff.service_failure is not None:
            view["last_error"] = SECRET_VALUES.text(self.backoff.service_failure.message)
            view["retry_after"] = round(self.backoff.wait, 3)
        return view

    def status(self) -> dict[str, Any]:
        """
        @return: The admin's view: L{describe}, plus the counters, the
            backoff, the last start failure and how many tools it declared.
        """
        view = self.describe()
        cached = self.tool_cache.cached
        view.update(
            spawns=self.spawns,
            start_failures=self.start_failures,
            crashes=self.crashes,
            failures=self.failures,
            backoff=round(self.backoff.wait, 3),
            credentials_backing_off=self.backoff.credentials_backing_off,
            last_error=SECRET_VALUES.text(self.last_failure.message) if self.last_failure is not None else None,
            tools=len(cached) if cached is not None else None,
            pool=self.pool_size,
        )
        return view

    def recycle(self) -> int:
        """
        Close the warm pool's children, forget the backoff (the next start
        is tried at once), and fill the pool again with fresh children.

        @return: How many pool children were closed.
        """
        self.backoff.forget()
        return self.pool.recycle()

    # -- children --------------------------------------------------------------

    async def spawn(
        self, credential_env: Mapping[str, str] | None = None, credential_headers: Mapping[str, str] | None = None
    ) -> Child:
        """
        Start a new child and complete its handshake (for a C{url} service:
        open a session with the server).

        @param credential_env: Variables of the principal the child is for
            (its credential), set last, past the sandbox's filter.
        @param credential_headers: HTTP headers of the principal a C{url}
            service's session is for (its credential), over the configured ones.
        @return: The ready child, already counted in L{children}.
        @raise ServiceUnavailable: If the service is backing off or this start
            fails.  A stdio child that fails to start with a caller's own
            credential (not the C{default} one the tool listing uses) backs
            off that credential only: one caller's revoked token does not
            refuse every other caller.
        """
        if self._stopping:
            raise ServiceUnavailable(f"service {self.name!r} is shutting down", retry_after=1)
        # A url service's sessions all back off together.
        credential = None if self.config.url else credential_key(credential_env, self.listing_env)
        self.backoff.check(credential)
        holder: list[Child] = []
        self._starting += 1
        self.spawns += 1
        launch: Launch | None = None
        workdir: str | None = None
        started: list[Peer] = []

        def running(protocol: Peer) -> None:
            started.append(protocol)
            self._starting_protocols.add(protocol)
            if isinstance(protocol, ChildProtocol):
                protocol.explain_exit = lambda info: self.ends.explain(info, launch.cgroup if launch else None)

        try:
            if self.config.url:
                if self._remote is None:
                    self._remote = RemoteClient(self.config, self._reactor)
                child = await open_remote(
                    self._remote,
                    self._clock,
                    self.config,
                    {**self.config.headers, **(credential_headers or {})},
                    hint=self.era,
                    transport=self._remote.transport,
                    on_notification=lambda method, params: self.tool_cache.notified(holder, method, params),
                    on_peer=running,
                )
                if isinstance(child.protocol, HttpPeer):
                    self._remote.transport = child.protocol.transport
            else:
                try:
                    workdir = self._dirs.make()
                    launch = build_launch(
                        self.config.sandbox,
                        self.config.command,
                        service=self.name,
                        workdir=workdir,
                        extra_env=self.config.env,
                        gateway_env=os.environ,
                        secrets=(*self._secrets, *self.hidden_values()),
                        cache_dir=self._dirs.cache(),
                    )
                except OSError as error:
                    raise StartFailed(f"cannot set up the sandbox: {error.strerror or error}", None, "") from None
                child = await spawn_child(
                    self._reactor,
                    self._clock,
                    f"{self.name}",
                    launch.executable,
                    launch.args,
                    {**launch.env, **(credential_env or {})},
                    launch.path,
                    max_line=self.config.max_line_bytes,
                    # The first start may have to download the server (npx, uvx).
                    handshake_timeout=self.config.handshake_timeout
                    if self._started_once
                    else self.config.first_start_timeout(),
                    discover_timeout=self.config.discover_timeout,
                    close_grace=self.config.close_grace,
                    hint=self.era,
                    on_notification=lambda method, params: self.tool_cache.notified(holder, method, params),
                    on_process=running,
                )
        except StartFailed as failure:
            if launch is not None:
                launch.cleanup()
            self._dirs.remove(workdir)
            if self._stopping:
                raise ServiceUnavailable(f"service {self.name!r} is shutting down", retry_after=1) from None
            if credential_headers is not None and failure.http_status in (401, 403):
                # A credential refused (a caller's, or the tool listing's
                # default) is not the service failing: no backoff for every
                # other principal.
                raise ChildFailed(
                    f"the {self.name} server refused the credential: {failure.reason}",
                    service=self.name,
                    http_status=failure.http_status,
                ) from None
            raise self.backoff.failed(failure, credential) from None
        finally:
            self._starting -= 1
            for protocol in started:
                self._starting_protocols.discard(protocol)
        holder.append(child)
        self.backoff.started(credential)
        self.era = child.era
        self._started_once = True
        self.children.add(child)
        self._stable_timers[child] = self._clock.callLater(self.config.backoff_reset, self._stable, child)
        child.when_ended().addCallback(self._ended, child, launch)
        if self.on_handshake is not None:
            self.on_handshake(child.ready_at - child.started_at)
        log.info(
            "{service}: child {pid} ready ({era} {version}) in {ms:.1f} ms",
            service=self.name,
            pid=child.pid if child.pid is not None else self.config.url,
            era=child.era.name,
            version=child.era.version,
            ms=(child.ready_at - child.started_at) * 1000,
        )
        return child

    @property
    def stderr_bytes(self) -> int:
        """
        @return: Bytes its children (live and ended) wrote to stderr.
        """
        return self.ends.stderr_bytes(self.children)

    @property
    def pool_size(self) -> int:
        """
        @return: Ready children waiting in the warm pool.
        """
        return self.pool.size

    @property
    def pool_pending(self) -> int:
        """
        @return: Pool children ready or starting.
        """
        return self.pool.pending

    def acquire(
        self, credential_env: Mapping[str, str] | None = None, credential_headers: Mapping[str, str] | None = None
    ) -> Deferred[Child]:
        """
        A child for a new session: a warm one from the pool if there is one,
        else a fresh spawn.  The caller refills the pool (L{refill_pool}) once
        the new session counts against the limits.

        @param credential_env: A principal's credential: the child is then
            always a fresh one started with it (never a pooled one).
        @param credential_headers: A principal's credential for a C{url}
            service (see L{spawn}): a fresh session too.
        @return: Fires with a ready child, already counted in L{children}.
        """
        if credential_env is not None or credential_headers is not None:
            return ensureDeferred(self.spawn(credential_env, credential_headers))
        child = self.pool.take()
        return succeed(child) if child is not None else ensureDeferred(self.spawn())

    def refill_pool_soon(self, delay: float = POOL_REFILL_DELAY) -> None:
        """
        Refill the warm pool soon (L{WarmPool.refill_soon}).
        """
        self.pool.refill_soon(delay)

    def refill_pool(self) -> None:
        """
        Refill the warm pool now (L{WarmPool.refill}).
        """
        self.pool.refill()

    def _stable(self, child: Child) -> None:
        self._stable_timers.pop(child, None)
        self.backoff.stable()

    def _ended(self, info: ExitInfo, child: Child, launch: Launch | None = None) -> None:
        self.children.discard(child)
        if launch is not None:
            launch.cleanup()  # its cgroup, and anything left in it
        self.ends.record(info, child)
        self.pool.ended(child, info)
        timer = self._stable_timers.pop(child, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._dirs.remove(child.workdir)
        log.info("{service}: child {pid} {how}", service=self.name, pid=child.pid, how=info.describe())

    # -- tools -----------------------------------------------------------------

    def declares(self, tool: str) -> bool:
        """
        @return: Whether C{tool} is in the cached tool list the service declared.
        """
        return self.tool_cache.declares(tool)

    def tools(self) -> Deferred[list[dict[str, Any]]]:
        """
        The service's tools, from the cache, or filled once for all waiting callers.

        @return: Fires with the MCP C{Tool} objects of every page.
        """
        return self.tool_cache.tools()

    def _ready_child(self) -> Child | None:
        return self.pool.ready()

    # -- shutdown ----------------------------------------------------------------

    async def stop(self) -> None:
        """
        Close every child of this service and refuse new ones.
        """
        self._stopping = True
        self.pool.stop()
        for timer in self._stable_timers.values():
            if timer.active():
                timer.cancel()
        self._stable_timers.clear()
        starting = list(self._starting_protocols)
        for protocol in starting:
            protocol.abort("the gateway is stopping")
        await gatherResults(
            [child.close(self.config.close_grace) for child in list(self.children)]
            + [protocol.ended.wait() for protocol in starting]
        )
        if self._remote is not None:
            await self._remote.close()
