"""
The twistd plugin's C{Options} and C{makeService}.

C{Options} reads and checks the configuration (a start it refuses ends with
one line, L{StartRefused}); C{makeService} only builds the service tree of
L{mcpgateway.runtime}: twistd may fork and drop privileges after it, so
children, loops and listening sockets start in C{startService}.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.python import usage

from mcpgateway.cluster.directory import Directory
from mcpgateway.cluster.placement import Placement
from mcpgateway.cluster.workers import STOP_GRACE, WorkerPool, worker_command
from mcpgateway.config import ConfigError, GatewayConfig, ServerConfig, load_config
from mcpgateway.config.issuers import is_loopback_host
from mcpgateway.drain import Drain
from mcpgateway.gateway import Gateway
from mcpgateway.http.forward import Fleet
from mcpgateway.http.rest import GatewayApp, MetricsPage
from mcpgateway.http.site import GatewaySite
from mcpgateway.http.tls import TLSError, load_tls
from mcpgateway.observe.access import AccessLog
from mcpgateway.observe.audit import AuditLog
from mcpgateway.observe.auditstorage import missing_driver, storage_uri
from mcpgateway.policy.credentials import Credentials
from mcpgateway.policy.ratelimit import RateLimiter
from mcpgateway.runtime import (
    ClusterService,
    DrainingService,
    GatewayService,
    Governance,
    listening_service,
    make_authenticator,
    make_site,
)

DEFAULT_CERT = "certs/server.pem"

__all__ = ["Options", "StartRefused", "makeService"]


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
