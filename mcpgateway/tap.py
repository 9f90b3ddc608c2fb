"""
The twistd plugin's C{Options} and C{makeService}.

C{makeService} only builds the service tree: twistd may fork and drop
privileges after it, so children, loops and listening sockets start in
C{startService}.
"""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python import usage

from .auth import Authenticator
from .config import ConfigError, GatewayConfig, load_config
from .gateway import Gateway
from .logs import configure
from .site import GatewaySite
from .web import GatewayApp

__all__ = ["GatewayService", "Options", "makeService"]


class Options(usage.Options):
    """
    C{twistd mcpgateway --config PATH}.
    """

    optParameters = [
        ["config", "c", None, "Path of the JSON configuration file (required)."],
        ["listen", "l", None, "A strports endpoint overriding server.host/port, e.g. tcp:8080:interface=127.0.0.1."],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config PATH is required (e.g. --config config/config.json)")
        try:
            self["gateway_config"] = load_config(self["config"])
        except ConfigError as error:
            raise usage.UsageError(f"configuration error: {error}") from None
        server = self["gateway_config"].server
        if not (server.auth_token or (server.auth_user and server.auth_password)):
            raise usage.UsageError(
                f"configuration error: {self['config']}: server: set auth_user and auth_password, or auth_token"
            )


class GatewayService(Service):
    """
    Runs the L{Gateway}: starts its reaper, and on stop closes every child.
    """

    def __init__(self, gateway: Gateway, config: GatewayConfig) -> None:
        self.gateway = gateway
        self.config = config

    def startService(self) -> None:
        configure(self.config.logging.level, self.config.logging.file)
        super().startService()
        self.gateway.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self.gateway.stop())


def endpoint_description(config: GatewayConfig) -> str:
    """
    @return: The strports description for C{server.host} and C{server.port}.
    """
    host = config.server.host.replace(":", "\\:")
    return f"tcp:{config.server.port}:interface={host}"


def makeService(options: dict[str, Any]) -> IService:
    """
    Build (but do not start) the gateway's service tree.

    @param options: Parsed L{Options}.
    @return: A L{MultiService} holding the gateway and its web server.
    """
    from twisted.internet import reactor

    config: GatewayConfig = options["gateway_config"]
    gateway = Gateway(config, reactor, reactor)
    app = GatewayApp(gateway, Authenticator(config.server))
    site = GatewaySite(app.resource(), config.server.max_body_bytes)
    top = MultiService()
    # The web server is stopped first (services stop in reverse order), then the gateway.
    GatewayService(gateway, config).setServiceParent(top)
    strports.service(options["listen"] or endpoint_description(config), site).setServiceParent(top)
    return top
