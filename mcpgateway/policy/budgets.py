"""
Call budgets: how many tool calls a principal may make to a service (or to
some of its tools) per window, e.g. C{"1000 per day"}, counted with the
C{limits} library in the configured storage (C{memory://}, or C{redis://}
shared by every gateway process).  Not a rate limit: a rate limit protects
the gateway from bursts and resets within minutes; a budget caps what an
agent may spend, and its refusal is 429 C{budget_exhausted} with a
C{Retry-After} of up to the whole window.

Counters
========

A budget applies to a call when it names the caller (by name, role or
C{*}), its C{service} matches the call's service and, if it has a C{tool},
that tool pattern matches the call's tool.  It counts in one counter per
principal, service and tool pattern::

    LIMITER/budget/<principal>/<service>/<tool pattern or *>/<amount>/<multiples>/<unit>

(in Redis under the prefix C{mcpgateway:}).  So C{"service": "*"} gives each
service its own budget; without C{tool} every tool of the service shares it;
with C{"tool": "search_*"} the matching tools share one.  Counter names come
from the configuration and the principal's name only, never from the tool
name a client sends, so a client cannot make the gateway keep counters.
Budgets that resolve to the same counter (e.g. one for a role and one for a
principal, with the same limit) count a call once.

A call is counted against every counter that applies, only once the tool
policy has admitted it (L{mcpgateway.calls.ToolCalls} asks the policies in
order).  Every counter is first tested without counting; if one is spent the
call is refused and nothing is counted, so a refusal by one budget does not
spend another.  Then each is counted (two processes racing for the last
call may both be refused).  A call counts whatever its outcome, tool errors
and failures included.

Storage
=======

C{budgets.storage_uri} (C{rate_limiting.storage_uri} when empty), reached
as the rate limits reach theirs (L{mcpgateway.policy.storage.Counters}):
inline on C{memory://}; in a thread with short timeouts on Redis, failing
open to counting in this process while Redis is unreachable (each gateway
process then allows the whole budget; what it counts meanwhile is not
carried over to Redis).

Visibility
==========

L{BudgetPolicy.report} (C{GET /budgets}, admins only) reads every counter of
the configured principals and of the principals this process has counted,
for each budget and each service it matches.  The gauge
C{mcpgateway_budget_remaining} shows each counter as this process last saw
it (after a call it counted, or a report), and the full amount once its
window has ended.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem
from limits.strategies import FixedWindowRateLimiter
from limits.util import WindowStats
from prometheus_client.core import GaugeMetricFamily
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from mcpgateway.config import BudgetRule, BudgetsConfig, GatewayConfig
from mcpgateway.config.governance import is_glob
from mcpgateway.errors import BudgetExhausted
from mcpgateway.observe.logs import logger, now_iso
from mcpgateway.observe.security import security_event
from mcpgateway.policy.auth import Principal
from mcpgateway.policy.matching import CallFacts, ToolPattern, Who, configured_principals, warn_unknown
from mcpgateway.policy.ratelimit import STORAGE_URI, parse_limits
from mcpgateway.policy.storage import HIT_TIMEOUT, STORAGE_RETRY_INTERVAL, Counters, escape_key

__all__ = ["BudgetPolicy"]

log = logger("mcpgateway.budgets")

#: The counters remembered per principal, service and tool before the table is emptied.
_LOOKUPS_KEPT = 16384
#: Principals remembered for reports besides the configured ones.
_PRINCIPALS_KEPT = 10000


@dataclass(frozen=True)
class _Budget:
    """
    One budget, compiled.
    """

    rule: BudgetRule
    who: Who
    pattern: ToolPattern
    items: tuple[RateLimitItem, ...]

    @property
    def tool(self) -> str:
        return self.rule.tool or "*"


@dataclass(frozen=True)
class _Counter:
    """
    One counter: a limit for one principal, service and tool pattern.
    """

    item: RateLimitItem
    principal: str
    service: str
    tool: str

    @property
    def identifiers(self) -> tuple[str, str, str, str]:
        return ("budget", escape_key(self.principal), self.service, self.tool)

    @property
    def labels(self) -> tuple[str, str, str, str]:
        return (self.principal, self.service, self.tool, str(self.item))

    def describe(self) -> str:
        if self.tool == "*":
            return f"{self.item} calls to {self.service} (every tool) for {self.principal}"
        what = "tools" if is_glob(self.tool) else "tool"
        return f"{self.item} calls to {self.service} ({what} {self.tool}) for {self.principal}"


@dataclass(frozen=True)
class _Spent:
    """
    What counting one call found: the counters that refused it, and each
    counter's window afterwards.
    """

    refused: tuple[_Counter, ...]
    windows: tuple[tuple[_Counter, WindowStats], ...]


def _spend(limiter: FixedWindowRateLimiter, counters: Sequence[_Counter]) -> _Spent:
    """
    Count one call against C{counters}, unless one of them is spent.
    Blocking on a remote storage: call it in a thread.
    """
    refused = tuple(counter for counter in counters if not limiter.test(counter.item, *counter.identifiers))
    if not refused:
        for counter in counters:
            if not limiter.hit(counter.item, *counter.identifiers):
                refused = (counter,)
                break
    return _Spent(refused, _windows(limiter, counters))


def _windows(limiter: FixedWindowRateLimiter, counters: Iterable[_Counter]) -> tuple[tuple[_Counter, WindowStats], ...]:
    return tuple((counter, limiter.get_window_stats(counter.item, *counter.identifiers)) for counter in counters)


class BudgetPolicy:
    """
    The C{budgets} section, as a L{mcpgateway.calls.CallPolicy} (it hides
    nothing) and a metric source.
    """

    def __init__(
        self,
        config: BudgetsConfig,
        storage_uri: str,
        storage_key: str = "budgets.storage_uri",
        *,
        services: Iterable[str] = (),
        principals: Iterable[Principal] = (),
        clock: IReactorTime | None = None,
        storage_retry_interval: float = STORAGE_RETRY_INTERVAL,
        hit_timeout: float = HIT_TIMEOUT,
    ) -> None:
        """
        Check the limits and prepare the storage (nothing is connected yet).

        @param config: The C{budgets} section.
        @param storage_uri: Where the counters live.
        @param storage_key: The configuration key it came from, for errors.
        @param services: The enabled services' names (for reports).
        @param principals: The configured principals (for reports).
        @param clock: Times the shared storage's work; the reactor if L{None}.
        @raise ConfigError: Naming the key of a limit or storage URI that is wrong.
        """
        self._budgets = tuple(
            _Budget(
                rule,
                Who(rule.principals, rule.roles),
                ToolPattern(f"{rule.service}/{rule.tool or '*'}"),
                tuple(parse_limits(rule.limit, f"{rule.path}.limit")),
            )
            for rule in config.rules
        )
        self._services = tuple(services)
        self._principals: dict[str, Principal] = {principal.name: principal for principal in principals}
        self._configured = len(self._principals)
        names = set(self._principals)
        for rule in config.rules:
            warn_unknown(log, rule.path, rule.principals, names)
        self._lookups: dict[tuple[str, str, str, str], tuple[_Counter, ...]] = {}
        self._last: dict[tuple[str, str, str, str], tuple[int, int, float]] = {}
        self._counters = Counters(
            storage_uri,
            storage_key,
            log,
            what="budget",
            clock=clock,
            retry_interval=storage_retry_interval,
            hit_timeout=hit_timeout,
        )

    @classmethod
    def from_config(cls, config: GatewayConfig) -> BudgetPolicy | None:
        """
        @return: The budgets of C{config}, or L{None} when it has none.
        @raise ConfigError: Naming the key of a limit or storage URI that is wrong.
        """
        budgets = config.budgets
        if not budgets.rules:
            return None
        if budgets.storage_uri.strip():
            uri, key = budgets.storage_uri.strip(), "budgets.storage_uri"
        else:
            uri, key = config.rate_limiting.storage_uri.strip() or STORAGE_URI, "rate_limiting.storage_uri"
        services = [name for name, service in config.services.items() if service.enabled]
        return cls(budgets, uri, key, services=services, principals=configured_principals(config.server))

    # -- CallPolicy ----------------------------------------------------------------

    def visible(self, principal: Principal, service: str, tool: str) -> bool:
        """
        @return: L{True}: a budget hides nothing (a spent one refuses calls).
        """
        return True

    def visible_service(self, principal: Principal, service: str) -> bool:
        """
        @return: L{True}: a budget hides nothing.
        """
        return True

    def admit(self, request: CallFacts) -> Deferred[None] | None:
        """
        Count the call against every budget that applies.

        @return: L{None} when none applies, else a Deferred that fires once
            it is counted, or fails with L{BudgetExhausted}.
        """
        counters = self._counters_for(request.principal, request.service, request.tool)
        if not counters:
            return None
        self._remember(request.principal)
        return self._counters.run(lambda limiter: _spend(limiter, counters)).addCallback(self._spent, request)

    # -- reports -----------------------------------------------------------------------

    def report(self) -> Deferred[dict[str, Any]]:
        """
        @return: Fires with the C{GET /budgets} body: the storage and, for
            each budget, principal, service and limit, what is used and left.
        """
        owners: dict[_Counter, list[str]] = {}
        for budget in self._budgets:
            for principal in self._principals.values():
                if principal not in budget.who:
                    continue
                for service in self._services:
                    if budget.pattern.covers_service(service):
                        for item in budget.items:
                            owners.setdefault(_Counter(item, principal.name, service, budget.tool), []).append(
                                budget.rule.path
                            )
        shown = self._counters.shown

        def render(windows: tuple[tuple[_Counter, WindowStats], ...]) -> dict[str, Any]:
            self._note(windows)
            now = time.time()
            entries = []
            for counter, window in windows:
                used = counter.item.amount - window.remaining
                entries.append(
                    {
                        "principal": counter.principal,
                        "service": counter.service,
                        "tool": counter.tool,
                        "limit": str(counter.item),
                        "used": used,
                        "remaining": window.remaining,
                        "reset_at": now_iso(window.reset_time) if used > 0 and window.reset_time > now else None,
                        "budgets": owners[counter],
                    }
                )
            return {
                "storage": shown,
                "shared": self._counters.shared,
                "degraded": self._counters.down,
                "budgets": entries,
            }

        return self._counters.run(lambda limiter: _windows(limiter, owners)).addCallback(render)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """
        The gauge C{mcpgateway_budget_remaining}, from what this process last saw.
        """
        family = GaugeMetricFamily(
            "mcpgateway_budget_remaining",
            "Calls left in a budget's window, by principal, service, tool pattern (* for every tool) and limit,"
            " as this process last saw them.",
            labels=["principal", "service", "tool", "limit"],
        )
        now = time.time()
        for labels, (amount, remaining, reset_at) in sorted(self._last.items()):
            family.add_metric(list(labels), amount if reset_at <= now else remaining)
        yield family

    def close(self) -> None:
        """
        Disconnect from the storage (call when the gateway stops).
        """
        self._counters.close()

    # -- internals -------------------------------------------------------------------

    def _counters_for(self, principal: Principal, service: str, tool: str) -> tuple[_Counter, ...]:
        key = (principal.name, principal.role, service, tool)
        counters = self._lookups.get(key)
        if counters is None:
            if len(self._lookups) >= _LOOKUPS_KEPT:
                self._lookups.clear()
            found: dict[_Counter, None] = {}
            for budget in self._budgets:
                if principal in budget.who and budget.pattern.matches(service, tool):
                    for item in budget.items:
                        found[_Counter(item, principal.name, service, budget.tool)] = None
            # shortest window first: the refusal a caller most often meets is found first
            counters = self._lookups[key] = tuple(sorted(found, key=lambda c: (c.item.get_expiry(), c.item.amount)))
        return counters

    def _remember(self, principal: Principal) -> None:
        if principal.name not in self._principals and len(self._principals) < self._configured + _PRINCIPALS_KEPT:
            self._principals[principal.name] = principal

    def _note(self, windows: Iterable[tuple[_Counter, WindowStats]]) -> None:
        for counter, window in windows:
            self._last[counter.labels] = (counter.item.amount, window.remaining, window.reset_time)

    def _spent(self, spent: _Spent, request: CallFacts) -> None:
        self._note(spent.windows)
        if not spent.refused:
            return
        resets = dict(spent.windows)
        counter = max(spent.refused, key=lambda c: resets[c].reset_time)
        retry_after = max(0.0, resets[counter].reset_time - time.time())
        security_event(
            "budget_exhausted",
            address=request.address,
            principal=request.principal.name,
            route=f"tools/call {request.service}/{request.tool} ({request.front})",
            service=counter.service,
            tool=counter.tool,
            limit=str(counter.item),
        )
        raise BudgetExhausted(
            f"the budget of {counter.describe()} is spent; retry after {math.ceil(retry_after)} s",
            retry_after=retry_after,
            service=counter.service,
            tool=counter.tool,
            limit=str(counter.item),
        )
