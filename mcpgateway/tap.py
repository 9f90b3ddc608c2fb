"""
The twistd plugin's C{Options} and C{makeService}.

C{makeService} only builds the service tree: twistd may fork and drop
privileges after it, so children, loops and listening sockets start in
C{startService}.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.ssl import CertificateOptions
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.web.http import Request

from mcpgateway.calls import CallPolicy
from mcpgateway.cluster.directory import Directory
from mcpgateway.cluster.placement import Placement
from mcpgateway.cluster.workers import (
    STOP_GRACE,
    SUPERVISOR_ENV,
    ReusePortService,
    WorkerPool,
    die_with_parent,
    worker_command,
)
from mcpgateway.config import ConfigError, GatewayConfig, ServerConfig, load_config
from mcpgateway.config.issuers import is_loopback_host
from mcpgateway.drain import Drain
from mcpgateway.gateway import Gateway
from mcpgateway.http.fetch import fetch
from mcpgateway.http.forward import Fleet
from mcpgateway.http.rest import GatewayApp, MetricsPage
from mcpgateway.http.site import GatewaySite
from mcpgateway.http.streamable import McpEndpoint
from mcpgateway.http.tls import TLSError, load_tls
from mcpgateway.observe.access import AccessLog
from mcpgateway.observe.audit import AuditLog
from mcpgateway.observe.auditdb import missing_driver, storage_uri
from mcpgateway.observe.logs import configure, logger
from mcpgateway.observe.security import SecurityFile
from mcpgateway.policy.auth import Authenticator
from mcpgateway.policy.budgets import BudgetPolicy
from mcpgateway.policy.credentials import Credentials
from mcpgateway.policy.jwt import Tokens
from mcpgateway.policy.ratelimit import RateLimiter
from mcpgateway.policy.rules import RulePolicy

DEFAULT_CERT = "certs/server.pem"

log = logger("mcpgateway.cluster")

__all__ = [
    "ClusterService",
    "DrainingService",
    "GatewayService",
    "Governance",
    "Options",
    "StartRefused",
    "makeService",
    "make_authenticator",
]


class StartRefused(SystemExit):
    """
    The configuration cannot be used: twistd exits with status 1 and this one
    line on stderr (a L{usage.UsageError} would print the whole usage first).
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"mcpgateway: {message}")


class Options(usage.Options):
    """
    C{twistd mcpgateway --config PATH}.
    """

    optParameters = [
        ["config", "c", None, "Path of the JSON configuration file (required)."],
        ["listen", "l", None, "A strports endpoint overriding server.host/port, e.g. tcp:8080:interface=127.0.0.1."],
        ["worker", None, None, "Internal: run as worker N of server.workers (started by the supervisor)."],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config PATH is required (e.g. --config config/config.json)")
        try:
            self["gateway_config"] = load_config(self["config"])
        except ConfigError as error:
            raise StartRefused(f"configuration error: {error}") from None
        self["config"] = os.path.abspath(self["config"])
        server = self["gateway_config"].server
        problem = credential_problem(server) or workers_problem(self["gateway_config"], self["listen"])
        if self["worker"] is not None:
            if server.workers == 1:
                raise StartRefused("--worker: only for the workers a supervisor starts (server.workers above 1)")
            if not (self["worker"].isdigit() and int(self["worker"]) < server.workers):
                raise StartRefused(f"--worker: expected a number below server.workers ({server.workers})")
            self["worker"] = int(self["worker"])
        if problem:
            raise StartRefused(f"configuration error: {self['config']}: {problem}")
        try:
            self["limiter"] = RateLimiter(self["gateway_config"].rate_limiting)
            self["governance"] = Governance.from_config(self["gateway_config"])
            # Read (and checked: mode, owner, every name referenced) before twistd forks.
            self["credentials"] = Credentials.from_config(self["gateway_config"])
        except ConfigError as error:
            raise StartRefused(f"configuration error: {self['config']}: {error}") from None
        audit = self["gateway_config"].audit
        problem = missing_driver(audit.storage) if audit.enabled else ""
        if problem:
            raise StartRefused(f"configuration error: {self['config']}: {problem}")
        # Read the certificate now, so a broken one stops the start with one line.
        cert = server.tls_cert or (DEFAULT_CERT if os.path.exists(DEFAULT_CERT) else "")
        try:
            self["tls"] = load_tls(cert) if cert else None
        except TLSError as error:
            raise StartRefused(f"TLS error: {error}") from None


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


PLACEHOLDER_PASSWORDS = frozenset({"changeme", "change-me", "password", "admin"})


def is_loopback(host: str) -> bool:
    """
    @return: Whether C{host} is a loopback address or C{localhost}.
    """
    return is_loopback_host(host)


def credential_problem(server: ServerConfig) -> str:
    """
    @return: Why these credentials must not be served, or C{""}.
    """
    seeds = bool(server.auth_token or (server.auth_user and server.auth_password))
    if not seeds and not server.principals and not server.issuers:
        return "server: set auth_user and auth_password, auth_token, or principals (or issuers, for JWTs)"
    if is_loopback(server.host):
        return ""
    if (server.auth_user or server.auth_password) and not (server.auth_user and server.auth_password):
        return f"server: an empty auth_user or auth_password is refused on the non-loopback address {server.host}"
    if server.auth_password.lower() in PLACEHOLDER_PASSWORDS:
        return (
            f"server.auth_password: the placeholder password {server.auth_password!r} is refused on the "
            f"non-loopback address {server.host}; set a real one (e.g. MCP_AUTH_PASSWORD)"
        )
    return ""


def workers_problem(config: GatewayConfig, listen: str | None) -> str:
    """
    @return: Why C{server.workers} cannot be served this way, or C{""}.
    """
    workers = config.server.workers
    if workers > 1 and listen:
        return f"server.workers: {workers} workers listen on server.host/port; --listen cannot be combined with them"
    if workers > 1 and config.server.metrics_listen:
        return (
            f"server.metrics_listen: {workers} workers cannot share one metrics address; "
            "read each worker's /metrics at its internal address (cluster.internal_port)"
        )
    return ""


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


def makeService(options: dict[str, Any]) -> IService:
    """
    Build (but do not start) the gateway's service tree.

    @param options: Parsed L{Options}.
    @return: A L{MultiService} holding the gateway and its web server.
    """
    from twisted.internet import reactor

    config: GatewayConfig = options["gateway_config"]
    worker: int | None = options.get("worker")
    if config.server.workers > 1 and worker is None:
        # The supervisor: the workers serve, each a twistd of its own.
        top = MultiService()
        path = options["config"]
        # A worker drains (session.drain_timeout) before it stops: SIGKILL only after that.
        grace = config.session.drain_timeout + STOP_GRACE
        pool = WorkerPool(config.server.workers, lambda i: worker_command(path, i), reactor, reactor, stop_grace=grace)
        pool.setServiceParent(top)
        return top
    gateway = Gateway(config, reactor, reactor, options.get("credentials"))
    fleet = None
    if config.cluster.enabled:
        placement = Placement(Directory(config.cluster, ""), gateway, worker or 0)
        fleet = Fleet(placement, config.cluster.secret, reactor, config.cluster.connect_timeout)
    limiter: RateLimiter = options["limiter"]
    governance: Governance = options["governance"]
    access = AccessLog(config.logging.access_log or "log", reactor)
    authenticator = make_authenticator(config.server, reactor)
    audit = None
    if config.audit.enabled:
        audit = AuditLog(config.audit, storage_uri(config.audit.storage, config.server.state_dir), reactor)
    observers = [audit] if audit is not None else []
    app = GatewayApp(
        gateway,
        authenticator,
        limiter,
        access=access,
        policies=governance.policies,
        observers=observers,
        audit=audit,
        fleet=fleet,
        drain=Drain(gateway, reactor, config.session.drain_timeout),
    )
    site = make_site(app, config)
    top = DrainingService(app.drain)
    if fleet is not None:
        # Started first, stopped last: the gateway's closing sessions leave the directory.
        ClusterService(config, fleet, site, worker).setServiceParent(top)
    # The web server is stopped first (services stop in reverse order), then the gateway.
    GatewayService(
        gateway,
        config,
        limiter,
        access,
        on_stop=[governance.close, app.stop],
        audit=audit,
        tokens=authenticator.tokens,
        on_start=[app.start],
        reload_on_hangup=config.secrets is not None,
    ).setServiceParent(top)
    if config.server.metrics_listen:
        page = GatewaySite(MetricsPage(app.metrics), 1024)
        strports.service(config.server.metrics_listen, page).setServiceParent(top)
    if options["listen"]:
        strports.service(options["listen"], site).setServiceParent(top)
    else:
        listening_service(config, options["tls"], site, worker).setServiceParent(top)
    return top
