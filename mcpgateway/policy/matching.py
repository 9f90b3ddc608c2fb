"""
What the tool policy and the budgets match a call on: who calls (a
principal's name or role, or everyone) and what (a tool pattern, see
L{mcpgateway.config.governance}), compiled once from the configuration.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from twisted.logger import Logger

from mcpgateway.config import ServerConfig
from mcpgateway.config.governance import EVERYONE, split_pattern
from mcpgateway.policy.auth import ADMIN, Principal

__all__ = ["CallFacts", "ToolPattern", "Who", "configured_principals", "warn_unknown"]


class CallFacts(Protocol):
    """
    What a policy knows of a call (L{mcpgateway.calls.CallRequest} is one).
    """

    @property
    def principal(self) -> Principal:
        """
        The caller.
        """

    @property
    def service(self) -> str:
        """
        The service called.
        """

    @property
    def tool(self) -> str:
        """
        The tool's name in the child.
        """

    @property
    def arguments(self) -> Mapping[str, Any]:
        """
        Its arguments.
        """

    @property
    def front(self) -> str:
        """
        The door it came in by: C{"rest"} or C{"mcp"}.
        """

    @property
    def address(self) -> str:
        """
        The client's IP address (C{"-"} if unknown).
        """


def configured_principals(server: ServerConfig) -> tuple[Principal, ...]:
    """
    @return: The principals the C{server} section defines: C{principals}, and
        the seeds' admin (C{auth_user}, or C{admin} for C{auth_token} alone)
        as L{mcpgateway.policy.auth.Authenticator} admits them.
    """
    found = [Principal(entry.name, entry.role) for entry in server.principals]
    if server.auth_token or (server.auth_user and server.auth_password):
        found.append(Principal(server.auth_user or "admin", ADMIN))
    return tuple(found)


def warn_unknown(log: Logger, path: str, names: Iterable[str], known: set[str]) -> None:
    """
    Warn about each principal name at C{path}'s C{principals} that no
    configured principal has (it applies only if such a principal comes from
    elsewhere).
    """
    for index, name in enumerate(names):
        if name != EVERYONE and name not in known:
            log.warn(
                "{path}.principals[{index}]: no configured principal is named {name}",
                path=path,
                index=index,
                name=repr(name),
            )


class Who:
    """
    The principals a rule applies to: by name, by role, or everyone.
    """

    def __init__(self, principals: Iterable[str], roles: Iterable[str]) -> None:
        names = frozenset(principals)
        self.everyone = EVERYONE in names
        self.names = names - {EVERYONE}
        self.roles = frozenset(roles)

    def __contains__(self, principal: Principal) -> bool:
        return self.everyone or principal.name in self.names or principal.role in self.roles


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


class ToolPattern:
    """
    One C{service} or C{service/tool} pattern, compiled.

    @ivar text: As configured.
    @ivar every_tool: Whether it matches every tool of the services it matches.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        service, tool = split_pattern(text)
        self._service = _glob(service)
        self._tool = _glob(tool)
        self.every_tool = tool == "*"

    def covers_service(self, service: str) -> bool:
        """
        @return: Whether it matches C{service} (some of its tools, or all).
        """
        return self._service.match(service) is not None

    def matches(self, service: str, tool: str) -> bool:
        """
        @return: Whether it matches C{tool} of C{service}.
        """
        return self._service.match(service) is not None and self._tool.match(tool) is not None
