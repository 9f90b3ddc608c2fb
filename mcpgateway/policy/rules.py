"""
The per-tool policy: which principal may see and call which tool, with which
arguments.  Plain data in (principal, service, tool, arguments), a decision
out; no HTTP, no children.  L{mcpgateway.calls.ToolCalls} asks it for every
listing and every call, on both doors, so the decision is the same
everywhere.

The decision
============

For a principal, the rules that apply are those naming it, one of its
roles, or C{*}.  For a tool C{service/tool}:

  1. a C{deny} pattern of an applying rule matches: B{denied} (deny wins);
  2. some applying rule has an C{allow} list: B{allowed} if one of those
     allow patterns matches, B{denied} otherwise (an allow list is the whole
     of what its principals may use, across every rule that applies);
  3. otherwise: C{policy.default} (C{allow} or C{deny}).

Rules apply to admins too: give them a rule such as
C{{"roles": ["admin"], "allow": ["*"]}} under C{"default": "deny"}.

A denied tool is absent from every listing, and calling it is refused with
403 C{forbidden_tool}.  An allowed tool is then checked against the argument
constraints of every applying rule whose pattern matches it (all must hold):
a refusal is 403 C{forbidden_argument}, naming the argument.  Constraints
never hide a tool.

A service is hidden from C{GET /services} when no tool of it can be allowed
(L{RulePolicy.visible_service}): a deny pattern covering all its tools, or
allow lists none of whose patterns names it, or C{default: deny} without an
allow list.  L{mcpgateway.calls.ToolCalls.visible_services} refines that with
the service's cached tool list when there is one.

Cost: patterns are compiled once; decisions are remembered per principal,
service and tool (a bounded table), so a listing of many tools costs a dict
lookup per tool once warm.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mcpgateway.config import GatewayConfig, PolicyConfig
from mcpgateway.config.governance import ALLOW, ArgumentConstraint, PolicyRule, is_glob, split_pattern
from mcpgateway.errors import Forbidden
from mcpgateway.observe.logs import logger
from mcpgateway.observe.security import security_event
from mcpgateway.policy.auth import Principal
from mcpgateway.policy.matching import CallFacts, ToolPattern, Who, configured_principals, warn_unknown

__all__ = ["RulePolicy"]

log = logger("mcpgateway.policy")

#: Decisions remembered (principal, service, tool) before the table is emptied.
_DECISIONS_KEPT = 16384


@dataclass(frozen=True)
class _Check:
    """
    One argument's constraint, compiled.
    """

    name: str
    constraint: ArgumentConstraint
    pattern: re.Pattern[str] | None

    def problem(self, arguments: Mapping[str, Any]) -> str | None:
        """
        @return: Why the call's arguments break the constraint, or L{None}.
        """
        name, rule = self.name, self.constraint
        if name not in arguments:
            return f"argument {name!r} is required by the policy"
        value = arguments[name]
        if not isinstance(value, str):
            return f"argument {name!r} must be a string"
        if rule.max_length is not None and len(value) > rule.max_length:
            return f"argument {name!r} must be at most {rule.max_length} characters"
        if rule.equals is not None and value != rule.equals:
            return f"argument {name!r} must be {rule.equals!r}"
        if rule.one_of is not None and value not in rule.one_of:
            return f"argument {name!r} must be one of {', '.join(repr(choice) for choice in rule.one_of)}"
        if rule.prefix is not None and not value.startswith(rule.prefix):
            return f"argument {name!r} must start with {rule.prefix!r}"
        if self.pattern is not None and self.pattern.fullmatch(value) is None:
            return f"argument {name!r} must match {rule.pattern!r}"
        return None


@dataclass(frozen=True)
class _Rule:
    """
    One rule, compiled.
    """

    who: Who
    allow: tuple[ToolPattern, ...]
    deny: tuple[ToolPattern, ...]
    arguments: tuple[tuple[ToolPattern, tuple[_Check, ...]], ...]

    @classmethod
    def compile(cls, rule: PolicyRule) -> _Rule:
        arguments = tuple(
            (
                ToolPattern(pattern),
                tuple(
                    _Check(name, constraint, re.compile(constraint.pattern) if constraint.pattern is not None else None)
                    for name, constraint in constraints.items()
                ),
            )
            for pattern, constraints in rule.arguments.items()
        )
        return cls(
            Who(rule.principals, rule.roles),
            tuple(ToolPattern(text) for text in rule.allow),
            tuple(ToolPattern(text) for text in rule.deny),
            arguments,
        )


class RulePolicy:
    """
    The C{policy} section, as a L{mcpgateway.calls.CallPolicy}.
    """

    def __init__(
        self, config: PolicyConfig, services: Iterable[str] = (), principals: Iterable[Principal] = ()
    ) -> None:
        """
        Compile the rules; warn about globs that match no service and names
        that match no principal (a principal may come from elsewhere than
        the configuration, so neither is an error).

        @param config: The C{policy} section.
        @param services: The configured services' names.
        @param principals: The configured principals.
        """
        self._allow_by_default = config.default == ALLOW
        self._rules = tuple(_Rule.compile(rule) for rule in config.rules)
        self._applying: dict[tuple[str, str], tuple[_Rule, ...]] = {}
        self._decisions: dict[tuple[str, str, str, str], bool] = {}
        known = tuple(services)
        names = {principal.name for principal in principals}
        for rule in config.rules:
            warn_unknown(log, rule.path, rule.principals, names)
            for key in ("allow", "deny"):
                for index, pattern in enumerate(getattr(rule, key)):
                    _warn_unmatched(pattern, f"{rule.path}.{key}[{index}]", known)
            for pattern in rule.arguments:
                _warn_unmatched(pattern, f"{rule.path}.arguments.{pattern}", known)

    @classmethod
    def from_config(cls, config: GatewayConfig) -> RulePolicy | None:
        """
        @return: The policy of C{config}, or L{None} when it has no C{policy} section.
        """
        if config.policy is None:
            return None
        return cls(config.policy, config.services, configured_principals(config.server))

    # -- CallPolicy ----------------------------------------------------------------

    def visible(self, principal: Principal, service: str, tool: str) -> bool:
        """
        @return: Whether C{principal} may see (and call) C{tool} of C{service}.
        """
        key = (principal.name, principal.role, service, tool)
        allowed = self._decisions.get(key)
        if allowed is None:
            if len(self._decisions) >= _DECISIONS_KEPT:
                self._decisions.clear()
            allowed = self._decisions[key] = self._decide(self._applying_to(principal), service, tool)
        return allowed

    def visible_service(self, principal: Principal, service: str) -> bool:
        """
        @return: Whether some tool of C{service} may be visible to C{principal}
            (L{False} only when none can be, whatever the service's tools are).
        """
        rules = self._applying_to(principal)
        if any(pattern.every_tool and pattern.covers_service(service) for rule in rules for pattern in rule.deny):
            return False
        allow_lists = [rule.allow for rule in rules if rule.allow]
        if allow_lists:
            return any(pattern.covers_service(service) for patterns in allow_lists for pattern in patterns)
        return self._allow_by_default

    def admit(self, request: CallFacts) -> None:
        """
        @raise Forbidden: C{forbidden_tool} if the principal may not call the
            tool, C{forbidden_argument} if an argument breaks a constraint.
        """
        principal, service, tool = request.principal, request.service, request.tool
        if not self.visible(principal, service, tool):
            self._refused(request, "forbidden_tool")
            raise Forbidden(
                f"{principal.name} may not call {service}/{tool}", "forbidden_tool", service=service, tool=tool
            )
        for rule in self._applying_to(principal):
            for pattern, checks in rule.arguments:
                if not pattern.matches(service, tool):
                    continue
                for check in checks:
                    problem = check.problem(request.arguments)
                    if problem is not None:
                        self._refused(request, "forbidden_argument", argument=check.name)
                        raise Forbidden(
                            f"{service}/{tool}: {problem}",
                            "forbidden_argument",
                            service=service,
                            tool=tool,
                            argument=check.name,
                        )

    # -- internals -------------------------------------------------------------------

    def _applying_to(self, principal: Principal) -> tuple[_Rule, ...]:
        key = (principal.name, principal.role)
        rules = self._applying.get(key)
        if rules is None:
            if len(self._applying) >= _DECISIONS_KEPT:
                self._applying.clear()
            rules = self._applying[key] = tuple(rule for rule in self._rules if principal in rule.who)
        return rules

    def _decide(self, rules: tuple[_Rule, ...], service: str, tool: str) -> bool:
        if any(pattern.matches(service, tool) for rule in rules for pattern in rule.deny):
            return False
        allow_lists = [rule.allow for rule in rules if rule.allow]
        if allow_lists:
            return any(pattern.matches(service, tool) for patterns in allow_lists for pattern in patterns)
        return self._allow_by_default

    @staticmethod
    def _refused(request: CallFacts, code: str, **fields: Any) -> None:
        security_event(
            "forbidden",
            address=request.address,
            principal=request.principal.name,
            route=f"tools/call {request.service}/{request.tool} ({request.front})",
            code=code,
            **fields,
        )


def _warn_unmatched(pattern: str, path: str, services: tuple[str, ...]) -> None:
    """
    Warn when the service glob of C{pattern} matches no configured service.
    """
    service = split_pattern(pattern)[0]
    if is_glob(service) and not any(ToolPattern(pattern).covers_service(name) for name in services):
        log.warn("{path}: {pattern} matches no configured service", path=path, pattern=repr(pattern))
