"""
The gateway process's service tree: what runs once twistd starts it.

L{mcpgateway.tap} reads the options and builds this tree; the services here
start it (children, loops, listening sockets, logs) in C{startService}, after
twistd has forked and dropped privileges, and stop it in order on SIGTERM.
The name is "runtime" and not "services": a service, in this gateway, is an
MCP server of the configuration.

The tree: L{DrainingService} at the top (drains before anything stops), then
L{ClusterService} (with C{cluster}), L{GatewayService} (the L{Gateway}, its
logs and its policies' storage), and the listeners (L{listening_service});
L{make_site} is the web server they serve, L{Governance} the tool policies
and L{make_authenticator} the credentials check the web side is given.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.ssl import CertificateOptions
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.http import Request

from mcpgateway.calls import CallPolicy
from mcpgateway.cluster.workers import SUPERVISOR_ENV, ReusePortService, die_with_parent
from mcpgateway.config import GatewayConfig, ServerConfig
from mcpgateway.drain import Drain
from mcpgateway.gateway import Gateway
from mcpgateway.http.fetch import fetch
from mcpgateway.http.forward import Fleet
from mcpgateway.http.rest import GatewayApp
from mcpgateway.http.site import GatewaySite
from mcpgateway.http.streamable import McpEndpoint
from mcpgateway.observe.access import AccessLog
from mcpgateway.observe.audit import AuditLog
from mcpgateway.observe.logs import configure, logger
from mcpgateway.observe.security import SecurityFile
from mcpgateway.policy.auth import Authenticator
from mcpgateway.policy.budgets import BudgetPolicy
from mcpgateway.policy.jwt import Tokens
from mcpgateway.policy.ratelimit import RateLimiter
from mcpgateway.policy.rules import RulePolicy

log = logger("mcpgateway.cluster")

__all__ = [
    "ClusterService",
    "DrainingService",
    "GatewayService",
    "Governance",
    "listening_service",
    "make_authenticator",
    "make_site",
]


class Governance:
    """
    The policies every tool call goes through, from the configuration: the
    tool policy (C{policy}), then the budgets (C{budgets}), so a forbidden
    call spends no budget.  Only the sections configured are built: without
    them a call pays nothing.

    @ivar rules: The tool policy, or L{None}.
    @ivar budgets: The budgets, or L{None}.
    """

    def __init__(self, rules: RulePolicy | None = None, budgets: BudgetPolicy | None = None) -> None:
        self.rules = rules
        self.budgets = budgets

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Governance:
        """
        @raise ConfigError: Naming the key of a limit or storage URI that is wrong.
        """
        return cls(RulePolicy.from_config(config), BudgetPolicy.from_config(config))

    @property
    def policies(self) -> list[CallPolicy]:
        """
        For L{GatewayApp}'s C{policies}, in the order they must be asked.
        """
        return [policy for policy in (self.rules, self.budgets) if policy is not None]

    def close(self) -> None:
        """
        Disconnect the budgets from their storage.
        """
        if self.budgets is not None:
            self.budgets.close()


def make_authenticator(server: ServerConfig, clock: IReactorTime) -> Authenticator:
    """
    @param server: The C{server} section.
    @param clock: The clock of token times and of the JWKS cache.
    @return: The credentials check, with JWT verification when
        C{server.issuers} is set (its JWKS fetched with
        L{mcpgateway.http.fetch.fetch}, not before L{Tokens.start}).
    """
    tokens = Tokens(server.issuers, clock, fetch) if server.issuers else None
    return Authenticator(server, tokens)


class GatewayService(Service):
    """
    Runs the L{Gateway}: starts its reaper, and on stop closes every child;
    starts and stops the access and audit logs around it.
    """

    def __init__(
        self,
        gateway: Gateway,
        config: GatewayConfig,
        limiter: RateLimiter | None = None,
        access: AccessLog | None = None,
        on_stop: Sequence[Callable[[], None]] = (),
        audit: AuditLog | None = None,
        tokens: Tokens | None = None,
        on_start: Sequence[Callable[[], None]] = (),
        reload_on_hangup: bool = False,
    ) -> None:
        """
        @param on_start: Called once the logs are configured, before the
            gateway starts (e.g. the dashboard's security events).
        @param on_stop: Called once the gateway has stopped and every call
            in flight has been answered (e.g. to disconnect the budgets).
        @param audit: The audit log, started and stopped with the gateway.
        @param reload_on_hangup: Reload the gateway's secrets on SIGHUP
            (L{Credentials.reload}) while running.
        """
        self.gateway = gateway
        self.config = config
        self.limiter = limiter
        self.access = access
        self.on_stop = tuple(on_stop)
        self.on_start = tuple(on_start)
        self.audit = audit
        self.tokens = tokens
        self.reload_on_hangup = reload_on_hangup
        self._previous_hangup: Any = None

    def startService(self) -> None:
        configure(self.config.logging.level, self.config.logging.file)
        if self.config.logging.security_file:
            SecurityFile.open(self.config.logging.security_file)
        super().startService()
        if self.access is not None:
            self.access.start()
        if self.audit is not None:
            self.audit.start()
        if self.tokens is not None:
            self.tokens.start()  # the issuers' JWKS, fetched off the reactor
        for start in self.on_start:
            start()
        if self.reload_on_hangup:
            self._previous_hangup = signal.signal(signal.SIGHUP, self._hangup)
        self.gateway.start()

    def _hangup(self, signum: int, frame: object) -> None:
        """
        SIGHUP: reload the secrets.  A signal handler may interrupt the
        reactor anywhere, so it only schedules the reload on the reactor's
        thread, as Twisted's own handlers do; the files are read in a thread.
        """
        from twisted.internet import reactor

        reactor.callFromThread(self.gateway.credentials.reload)  # type: ignore[attr-defined]

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self.tokens is not None:
            self.tokens.stop()
        if self._previous_hangup is not None:
            signal.signal(signal.SIGHUP, self._previous_hangup)
            self._previous_hangup = None

        def stopped(result: object) -> object:
            # Calls cut short by the stop are still answered, counted and
            # logged: close the limiter and the logs only afterwards.
            if self.limiter is not None:
                self.limiter.close()
            for stop in self.on_stop:
                stop()
            if self.access is not None:
                self.access.stop()
            if self.audit is not None:
                return self.audit.stop().addCallback(lambda _: result)
            return result

        return ensureDeferred(self.gateway.stop()).addBoth(stopped)


class DrainingService(MultiService):
    """
    The gateway's top service: stopping it (twistd does on SIGTERM or
    SIGINT) first drains the gateway (L{Drain.drain}, bounded by
    C{session.drain_timeout}) while the web server still listens, so live
    sessions keep working; then stops everything below it, which closes
    whatever children are left.  A second SIGTERM or SIGINT during the drain
    cuts it short.
    """

    def __init__(self, drain: Drain) -> None:
        super().__init__()
        self.drain = drain

    def stopService(self) -> Deferred[object]:
        restore = self._cut_short_on_signal()

        def stop(_: None) -> Deferred[object]:
            restore()
            stopped: Deferred[object] = MultiService.stopService(self)
            return stopped

        return self.drain.drain().addCallback(stop)

    def _cut_short_on_signal(self) -> Callable[[], None]:
        """
        While draining, SIGTERM and SIGINT end the drain at once (twistd's own
        handlers would only ask the stopping reactor to stop again).

        @return: Puts the previous handlers back.
        """
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        from twisted.internet import reactor

        def cut_short(signum: int, frame: object) -> None:
            reactor.callFromThread(self.drain.finish)  # type: ignore[attr-defined]

        previous = {signum: signal.signal(signum, cut_short) for signum in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

        return restore


class ClusterService(Service):
    """
    This process's part of the fleet: its internal listener (where other
    gateways forward the calls of the sessions it owns), its directory
    entries, its connections to the others.  Started before the gateway and
    stopped after it, so a closing session's entry is released.

    @ivar port: The internal listener, while running.
    """

    def __init__(self, config: GatewayConfig, fleet: Fleet, site: GatewaySite, worker: int | None) -> None:
        self.config = config
        self.fleet = fleet
        self.site = site
        self.worker = worker
        self.port: Any = None

    def startService(self) -> None:
        from twisted.internet import reactor

        if self.worker is not None:
            die_with_parent(int(os.environ.get(SUPERVISOR_ENV, "0")))
        cluster = self.config.cluster
        number = cluster.internal_port + (self.worker or 0) if cluster.internal_port else 0
        self.port = reactor.listenTCP(number, self.site, interface=cluster.internal_host)  # type: ignore[arg-type]
        host = cluster.advertise_host or cluster.internal_host
        if ":" in host:
            host = f"[{host}]"
        self.fleet.placement.directory.address = f"http://{host}:{self.port.getHost().port}"
        super().startService()
        self.fleet.placement.refresh()
        log.info(
            "sessions shared through {redis}; forwarded calls reach this process (worker {worker}) at {address}",
            worker=self.worker or 0,
            redis=cluster.redis.rpartition("@")[2],
            address=self.fleet.placement.address,
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()

        async def stop() -> None:
            if self.port is not None:
                await self.port.stopListening()
            await self.fleet.placement.stop()
            await self.fleet.close()

        return ensureDeferred(stop())


def listening_service(
    config: GatewayConfig, tls: CertificateOptions | None, site: GatewaySite, worker: int | None = None
) -> IService:
    """
    @param worker: This worker's number when C{server.workers} > 1: the port
        is shared with the others (C{SO_REUSEPORT}).
    @return: A service listening on C{server.host}:C{server.port}, with TLS if configured.
    """
    from twisted.internet import reactor

    server = config.server
    if worker is not None:
        factory: Any = site if tls is None else TLSMemoryBIOFactory(tls, False, site)
        return ReusePortService(reactor, server.host, server.port, factory)  # type: ignore[arg-type]
    if tls is None:
        endpoint: Any = TCP4ServerEndpoint(reactor, server.port, interface=server.host)
        if ":" in server.host:
            endpoint = TCP6ServerEndpoint(reactor, server.port, interface=server.host)
    else:
        endpoint = SSL4ServerEndpoint(reactor, server.port, tls, interface=server.host)
    return StreamServerEndpointService(endpoint, site)


def make_site(app: GatewayApp, config: GatewayConfig) -> GatewaySite:
    """
    @return: The HTTP server for C{app}, with the MCP endpoint mounted and
        the C{server} section's limits.
    """
    server = config.server
    endpoint = McpEndpoint(app.gateway, app.calls, app.guard)
    endpoint.fleet = app.fleet
    app.mount_mcp(endpoint)
    site = GatewaySite(
        app.resource(),
        server.max_body_bytes,
        idle_timeout=server.idle_timeout,
        request_timeout=server.request_timeout,
        max_header_bytes=server.max_header_bytes,
    )
    site.http_access_log = config.logging.http_access
    metrics = app.metrics

    def count(request: Request) -> None:
        metrics.request(request.path.decode("latin-1"), request.method.decode("latin-1"), request.code)

    site.on_response = count
    return site
