"""
Startup's configuration: the seeds' JSON format read against a schema into
frozen dataclasses that every layer below the startup code reads.

  - L{values}: C{${VAR|default}} substitution and the typed readers;
  - L{sandbox}: a service's C{sandbox} block (the policy, as data);
  - L{governance}: the C{policy} and C{budgets} sections;
  - L{issuers}: C{server.issuers}, the JWT issuers (keys, algorithms, claims);
  - L{cluster}: the C{cluster} section and C{server.workers};
  - L{secrets}: the C{secrets} section and a service's C{credentials};
  - L{server}: the C{server} section and its C{principals};
  - L{services}: the C{services} section and a top-level C{mcpServers};
  - L{audit}: the C{audit} section;
  - L{claude}: MCP clients' server lists as C{services} entries;
  - L{schema}: the whole document, its small sections, L{parse_config}
    and L{load_config}.

The names below are the public API (C{from mcpgateway.config import ...}).
"""

from mcpgateway.config.audit import AuditConfig
from mcpgateway.config.cluster import ClusterConfig
from mcpgateway.config.governance import (
    ArgumentConstraint,
    BudgetRule,
    BudgetsConfig,
    PolicyConfig,
    PolicyRule,
)
from mcpgateway.config.issuers import IssuerConfig
from mcpgateway.config.sandbox import ResourceLimits, SandboxPolicy, policy_from_config
from mcpgateway.config.schema import (
    GatewayConfig,
    LoggingConfig,
    RateLimitConfig,
    SessionConfig,
    load_config,
    parse_config,
)
from mcpgateway.config.server import PrincipalConfig, ServerConfig
from mcpgateway.config.services import ServiceConfig
from mcpgateway.config.values import ConfigError, substitute

__all__ = [
    "ArgumentConstraint",
    "AuditConfig",
    "BudgetRule",
    "BudgetsConfig",
    "ClusterConfig",
    "ConfigError",
    "GatewayConfig",
    "IssuerConfig",
    "LoggingConfig",
    "PolicyConfig",
    "PolicyRule",
    "PrincipalConfig",
    "RateLimitConfig",
    "ResourceLimits",
    "SandboxPolicy",
    "ServerConfig",
    "ServiceConfig",
    "SessionConfig",
    "load_config",
    "parse_config",
    "policy_from_config",
    "substitute",
]
