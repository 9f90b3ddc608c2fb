"""
The governance sections of the configuration, as frozen data: C{policy} (who
may see and call which tools, with which arguments) and C{budgets} (how many
calls per window).  L{mcpgateway.policy.rules} and
L{mcpgateway.policy.budgets} enforce them.

Tool patterns
=============

A pattern is C{service} or C{service/tool}, each part a name or an
C{fnmatch} glob (C{*}, C{?}, C{[abc]}, C{[!abc]}); a bare C{service} means
every tool of it, and C{*} every tool of every service.  Matching is
case-sensitive.  A service part without glob characters must name a
configured service (a typo would otherwise silently match nothing); a glob
that matches no configured service is only warned about at start.

Argument constraints
====================

C{arguments} maps a tool pattern to constraints on the call's arguments, by
argument name.  A constraint holds one or more of C{prefix}, C{equals},
C{one_of}, C{pattern} (a regular expression the whole value must match) and
C{max_length}; all must hold.  They apply to string arguments only: a
constrained argument that is missing or not a string is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mcpgateway.config.values import (
    ConfigError,
    Reader,
    integer,
    kind,
    positive,
    section,
    string,
    string_list,
)

__all__ = [
    "ALLOW",
    "DENY",
    "EVERYONE",
    "ROLES",
    "ArgumentConstraint",
    "BudgetRule",
    "BudgetsConfig",
    "PolicyConfig",
    "PolicyRule",
    "budgets_from_config",
    "check_service_names",
    "is_glob",
    "split_pattern",
    "tool_policy_from_config",
]

ALLOW = "allow"
DENY = "deny"
#: In C{principals}: every principal.
EVERYONE = "*"
#: The roles a principal may have (C{server.principals[].role}).
ROLES = ("admin", "agent")

_SERVICE_PART = re.compile(r"[A-Za-z0-9_\-*?\[\]!]{1,64}")
_TOOL_PART = re.compile(r"[A-Za-z0-9_.\-*?\[\]!]{1,128}")
_GLOB = re.compile(r"[*?\[]")
_PRINCIPAL = re.compile(r"[^\x00-\x20\x7f]{1,256}")


@dataclass(frozen=True)
class ArgumentConstraint:
    """
    What one string argument must be; every key given must hold.

    @ivar prefix: It starts with this.
    @ivar equals: It is exactly this.
    @ivar one_of: It is one of these.
    @ivar pattern: The whole of it matches this regular expression.
    @ivar max_length: It has at most this many characters.
    """

    prefix: str | None = None
    equals: str | None = None
    one_of: tuple[str, ...] | None = None
    pattern: str | None = None
    max_length: int | None = None


@dataclass(frozen=True)
class PolicyRule:
    """
    One entry of C{policy.rules}.

    @ivar principals: The principal names it applies to (C{*}: everyone).
    @ivar roles: The roles it applies to.
    @ivar allow: Tool patterns it allows.
    @ivar deny: Tool patterns it denies (deny wins over allow).
    @ivar arguments: Argument constraints by tool pattern, then argument name.
    @ivar path: Where it is in the configuration, e.g. C{policy.rules[0]}.
    """

    principals: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    arguments: Mapping[str, Mapping[str, ArgumentConstraint]] = field(default_factory=dict)
    path: str = ""


@dataclass(frozen=True)
class PolicyConfig:
    """
    The C{policy} section.

    @ivar default: C{allow} or C{deny}: what a principal no allow list
        applies to may call (besides what is denied).
    @ivar rules: The rules, in order (the order does not change a decision).
    """

    default: str
    rules: tuple[PolicyRule, ...] = ()


@dataclass(frozen=True)
class BudgetRule:
    """
    One entry of C{budgets.rules}.

    @ivar service: The service (name or glob) whose calls are counted, per service.
    @ivar limit: E.g. C{"1000 per day"} or C{"100/hour; 1000/day"}.
    @ivar principals: The principal names it applies to (C{*}: everyone).
    @ivar roles: The roles it applies to.
    @ivar tool: A tool (name or glob) whose calls alone are counted, in a
        counter of their own; C{""}: every tool of the service, together.
    @ivar path: Where it is in the configuration, e.g. C{budgets.rules[0]}.
    """

    service: str
    limit: str
    principals: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    tool: str = ""
    path: str = ""


@dataclass(frozen=True)
class BudgetsConfig:
    """
    The C{budgets} section.

    @ivar storage_uri: Where the counters live; C{""}: C{rate_limiting.storage_uri}.
    @ivar rules: The budgets.
    """

    storage_uri: str = ""
    rules: tuple[BudgetRule, ...] = ()


def is_glob(text: str) -> bool:
    """
    @return: Whether C{text} holds glob characters.
    """
    return _GLOB.search(text) is not None


def split_pattern(pattern: str) -> tuple[str, str]:
    """
    @return: The service and tool parts of a tool pattern (C{*} for a bare service).
    """
    service, _, tool = pattern.partition("/")
    return service, tool or "*"


def _pattern(value: Any, path: str, environ: Mapping[str, str]) -> str:
    return _check_pattern(string(value, path, environ), path)


def _check_pattern(pattern: str, path: str) -> str:
    service, slash, tool = pattern.partition("/")
    if not _SERVICE_PART.fullmatch(service) or (slash and not _TOOL_PART.fullmatch(tool)):
        raise ConfigError(
            f"{path}: {pattern!r} is not a tool pattern: expected 'service' or 'service/tool', each a name "
            "or a glob (* ? [...]); a service part is 1-64 of A-Z a-z 0-9 _ -, a tool part 1-128 of A-Z a-z 0-9 _ . -"
        )
    return pattern


def _patterns(value: Any, path: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list of tool patterns, got {kind(value)}")
    return tuple(_pattern(item, f"{path}[{index}]", environ) for index, item in enumerate(value))


def _principals(value: Any, path: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list of principal names ('*': everyone), got {kind(value)}")
    names = string_list(value, path, environ)
    for index, name in enumerate(names):
        if not _PRINCIPAL.fullmatch(name):
            raise ConfigError(f"{path}[{index}]: a principal name is 1-256 characters without spaces or controls")
    return names


def _roles(value: Any, path: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list of roles, got {kind(value)}")
    roles = string_list(value, path, environ)
    for index, role in enumerate(roles):
        if role not in ROLES:
            raise ConfigError(f"{path}[{index}]: expected one of {', '.join(ROLES)}, got {role!r}")
    return roles


def _regex(value: Any, path: str, environ: Mapping[str, str]) -> str:
    text = string(value, path, environ)
    try:
        re.compile(text)
    except re.error as error:
        raise ConfigError(f"{path}: not a regular expression: {error}") from None
    return text


def _one_of(value: Any, path: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}: expected a non-empty list of strings")
    return string_list(value, path, environ)


_CONSTRAINT: dict[str, Reader] = {
    "prefix": string,
    "equals": string,
    "one_of": _one_of,
    "pattern": _regex,
    "max_length": positive(integer),
}


def _constraint(value: Any, path: str, environ: Mapping[str, str]) -> ArgumentConstraint:
    values = section(value, path, environ, _CONSTRAINT)
    if not values:
        raise ConfigError(f"{path}: give at least one of {', '.join(sorted(_CONSTRAINT))}")
    return ArgumentConstraint(**values)


def _arguments(value: Any, path: str, environ: Mapping[str, str]) -> dict[str, dict[str, ArgumentConstraint]]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected an object of tool patterns, got {kind(value)}")
    result: dict[str, dict[str, ArgumentConstraint]] = {}
    for pattern, constraints in value.items():
        where = f"{path}.{pattern}"
        _check_pattern(pattern, where)
        if not isinstance(constraints, dict) or not constraints:
            raise ConfigError(f"{where}: expected an object of argument names, each with its constraint")
        for name in constraints:
            if not name:
                raise ConfigError(f"{where}: an argument name must not be empty")
        result[pattern] = {name: _constraint(raw, f"{where}.{name}", environ) for name, raw in constraints.items()}
    return result


def _entry(value: Any, path: str, environ: Mapping[str, str], readers: Mapping[str, Reader]) -> dict[str, Any]:
    """
    Read a rule or a budget, which must say whom it applies to.
    """
    values = section(value, path, environ, {"principals": _principals, "roles": _roles, **readers})
    if not values.get("principals") and not values.get("roles"):
        raise ConfigError(f"{path}: name the principals and/or roles it applies to (principals ['*']: everyone)")
    return values


_RULE: dict[str, Reader] = {"allow": _patterns, "deny": _patterns, "arguments": _arguments}


def _rule(value: Any, path: str, environ: Mapping[str, str]) -> PolicyRule:
    values = _entry(value, path, environ, _RULE)
    if not any(values.get(key) for key in ("allow", "deny", "arguments")):
        raise ConfigError(f"{path}: give allow, deny and/or arguments")
    return PolicyRule(path=path, **values)


def _default(value: Any, path: str, environ: Mapping[str, str]) -> str:
    decision = string(value, path, environ).strip().lower()
    if decision not in (ALLOW, DENY):
        raise ConfigError(f"{path}: expected allow or deny, got {decision!r}")
    return decision


def _rules(value: Any, path: str, environ: Mapping[str, str]) -> tuple[PolicyRule, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list of rules, got {kind(value)}")
    return tuple(_rule(raw, f"{path}[{index}]", environ) for index, raw in enumerate(value))


def tool_policy_from_config(value: Any, path: str, environ: Mapping[str, str]) -> PolicyConfig:
    """
    Read the C{policy} section.

    @raise ConfigError: Naming the key path that is wrong.
    """
    values = section(value, path, environ, {"default": _default, "rules": _rules})
    if "default" not in values:
        raise ConfigError(f"{path}.default: missing (allow or deny: what a principal without an allow list may call)")
    return PolicyConfig(**values)


def _name_or_glob(part: re.Pattern[str], what: str, *, optional: bool = False) -> Reader:
    """
    @param what: What it is and its syntax, for the error.
    @param optional: Whether C{""} (none) is allowed.
    @return: A reader of a name or glob of C{part}'s syntax.
    """

    def read(value: Any, path: str, environ: Mapping[str, str]) -> str:
        text = string(value, path, environ)
        if (text or not optional) and not part.fullmatch(text):
            raise ConfigError(f"{path}: expected {what}")
        return text

    return read


def _limit(value: Any, path: str, environ: Mapping[str, str]) -> str:
    text = string(value, path, environ).strip()
    if not text:
        raise ConfigError(f"{path}: expected a limit such as '1000 per day'")
    return text


_BUDGET: dict[str, Reader] = {
    "service": _name_or_glob(_SERVICE_PART, "a service name or glob (1-64 of A-Z a-z 0-9 _ - * ? [ ] !)"),
    "tool": _name_or_glob(_TOOL_PART, "a tool name or glob (1-128 of A-Z a-z 0-9 _ . - * ? [ ] !)", optional=True),
    "limit": _limit,
}


def _budget(value: Any, path: str, environ: Mapping[str, str]) -> BudgetRule:
    values = _entry(value, path, environ, _BUDGET)
    for key, what in (
        ("service", "the service whose calls it counts ('*': each service)"),
        ("limit", "e.g. '1000 per day'"),
    ):
        if key not in values:
            raise ConfigError(f"{path}.{key}: missing ({what})")
    return BudgetRule(path=path, **values)


def budgets_from_config(value: Any, path: str, environ: Mapping[str, str]) -> BudgetsConfig:
    """
    Read the C{budgets} section: C{{"storage_uri": ..., "rules": [...]}}, or
    the list of rules alone.

    @raise ConfigError: Naming the key path that is wrong.
    """
    if isinstance(value, list):
        rules = value
        rules_path = path
        storage_uri = ""
    else:
        values = section(value, path, environ, {"storage_uri": string, "rules": lambda v, p, e: v})
        rules = values.get("rules", [])
        rules_path = f"{path}.rules"
        storage_uri = values.get("storage_uri", "")
        if not isinstance(rules, list):
            raise ConfigError(f"{rules_path}: expected a list of budgets, got {kind(rules)}")
    budgets = tuple(_budget(raw, f"{rules_path}[{index}]", environ) for index, raw in enumerate(rules))
    return BudgetsConfig(storage_uri=storage_uri, rules=budgets)


def check_service_names(policy: PolicyConfig | None, budgets: BudgetsConfig, services: Mapping[str, Any]) -> None:
    """
    Check that every service named without a glob in C{policy} and
    C{budgets} is configured (enabled or not).

    @raise ConfigError: Naming the key path of the first that is not.
    """

    def check(service: str, path: str) -> None:
        if not is_glob(service) and service not in services:
            known = ", ".join(sorted(services)) or "none"
            raise ConfigError(f"{path}: no service named {service!r} (services: {known})")

    for rule in policy.rules if policy is not None else ():
        for key in ("allow", "deny"):
            for index, pattern in enumerate(getattr(rule, key)):
                check(split_pattern(pattern)[0], f"{rule.path}.{key}[{index}]")
        for pattern in rule.arguments:
            check(split_pattern(pattern)[0], f"{rule.path}.arguments.{pattern}")
    for budget in budgets.rules:
        check(budget.service, f"{budget.path}.service")
