"""
Prometheus metrics, via C{prometheus_client}, in a registry of the
gateway's own (no global state).

Counts and sizes that the gateway keeps anyway (sessions, children, spawns,
crashes, backoff, stderr bytes, pool size) are read when scraped by a custom
collector, so they cost nothing per call; only latencies and request counts
are recorded as they happen.  Label values come only from the configuration
and from the tool lists the services themselves declared: any other name is
counted as C{other}, so a client cannot mint label values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from typing import Any, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mcpgateway.lib.redact import SECRET_VALUES

__all__ = ["CONTENT_TYPE", "GatewayMetrics", "GatewayState", "MetricSource", "ServiceState", "route_of"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60)
_ROUTES = (
    (re.compile(r"/services/[^/]+/tools"), "/services/<name>/tools"),
    (re.compile(r"/services/[^/]+/call"), "/services/<name>/call"),
    (re.compile(r"/services/[^/]+/mcp"), "/services/<name>/mcp"),
    (re.compile(r"/sessions/[^/]+"), "/sessions/<id>"),
    (
        re.compile(r"/\.well-known/oauth-protected-resource/services/[^/]+/mcp"),
        "/.well-known/oauth-protected-resource/services/<name>/mcp",
    ),
)
_FIXED = frozenset(
    {
        "/health",
        "/services",
        "/sessions",
        "/metrics",
        "/mcp",
        "/budgets",
        "/audit",
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    }
)
#: Paths whose route pattern is remembered (then forgotten all at once).
_ROUTES_KEPT = 1024
_METHODS = frozenset({"GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"})


def route_of(path: str) -> str:
    """
    @param path: A request path.
    @return: The route pattern it matches, or C{"other"}.
    """
    if path in _FIXED:
        return path
    for pattern, name in _ROUTES:
        if pattern.fullmatch(path):
            return name
    return "other"


class ServiceState(Protocol):
    """
    What the metrics read of a service (L{mcpgateway.children.service.Service}).
    """

    on_handshake: Callable[[float], None] | None

    @property
    def transport(self) -> str:
        """
        C{stdio} (child processes) or C{http} (a C{url} service).
        """

    @property
    def children(self) -> Sized:
        """
        Its live children.
        """

    @property
    def spawns(self) -> int:
        """
        Children started (or tried).
        """

    @property
    def start_failures(self) -> int:
        """
        Children that failed to start.
        """

    @property
    def crashes(self) -> int:
        """
        Children that ended without being asked to.
        """

    @property
    def state(self) -> str:
        """
        C{ready}, C{failing}, ...
        """

    @property
    def pool_size(self) -> int:
        """
        Ready children in the warm pool.
        """

    @property
    def stderr_bytes(self) -> int:
        """
        Bytes its children wrote to stderr.
        """

    @property
    def limit_stops(self) -> Mapping[str, int]:
        """
        Children stopped by a sandbox limit, by limit.
        """

    def declares(self, tool: str) -> bool:
        """
        Whether C{tool} is in its tool list.
        """


class GatewayState(Protocol):
    """
    What the metrics read of the gateway (L{mcpgateway.gateway.Gateway}).
    """

    @property
    def services(self) -> Mapping[str, ServiceState]:
        """
        The services, by name.
        """

    @property
    def sessions(self) -> Sized:
        """
        The live sessions.
        """

    @property
    def restarts(self) -> Mapping[str, int]:
        """
        Session children replaced after a crash, by service.
        """


@runtime_checkable
class MetricSource(Protocol):
    """
    Something with metrics of its own, read when scraped (e.g. the budgets'
    remaining calls): a C{prometheus_client} collector.
    """

    def collect(self) -> Iterable[Metric]:
        """
        @return: The metric families, read now; must not block.
        """


class GatewayMetrics:
    """
    The gateway's metrics and their text rendering.
    """

    def __init__(self, gateway: GatewayState) -> None:
        """
        @param gateway: Whose state is collected at scrape time.
        """
        self.gateway = gateway
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mcpgateway_http_requests",
            "HTTP requests answered, by route pattern, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.tool_calls = Histogram(
            "mcpgateway_tool_call_seconds",
            "Tool calls through the gateway, by service, tool and outcome (ok, tool_error, or an error code).",
            ["service", "tool", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.handshakes = Histogram(
            "mcpgateway_handshake_seconds",
            "Spawn-to-ready time of children, by service.",
            ["service"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "mcpgateway_rate_limited", "Requests refused by a rate limit, by group.", ["group"], registry=self.registry
        )
        self.auth_failures = Counter(
            "mcpgateway_auth_failures", "Requests with missing or wrong credentials.", registry=self.registry
        )
        self.registry.register(_StateCollector(gateway))
        # The labelled children in use, by label values (labels() looks them up
        # under a lock each time), and the route pattern of recent paths.
        self._request_counters: dict[tuple[str, str, int], Any] = {}
        self._call_histograms: dict[tuple[str, str, str], Any] = {}
        self._routes: dict[str, str] = {}
        for name, service in gateway.services.items():
            service.on_handshake = self.handshakes.labels(name).observe

    def request(self, path: str, method: str, status: int) -> None:
        """
        Count one answered HTTP request.
        """
        route = self._routes.get(path)
        if route is None:
            if len(self._routes) >= _ROUTES_KEPT:
                self._routes.clear()
            route = self._routes[path] = route_of(path)
        key = (route, method if method in _METHODS else "other", status)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self._request_counters[key] = self.requests.labels(key[0], key[1], str(status))
        counter.inc()

    def tool_call(self, service: str, tool: str, outcome: str, seconds: float) -> None:
        """
        Record one tool call through the REST API or the MCP endpoint.

        @param outcome: C{ok}, C{tool_error} or the error code.
        """
        known = self.gateway.services.get(service)
        if known is None:
            service = tool = "other"
        elif not known.declares(tool):
            tool = "other"
        key = (service, tool, outcome)
        histogram = self._call_histograms.get(key)
        if histogram is None:
            histogram = self._call_histograms[key] = self.tool_calls.labels(service, tool, outcome)
        histogram.observe(seconds)

    def add(self, source: MetricSource) -> None:
        """
        Collect C{source}'s metrics with the gateway's, at every scrape.
        """
        self.registry.register(source)

    def render(self) -> bytes:
        """
        @return: The Prometheus text exposition of every metric, every
            loaded secret value in it redacted (labels carry names, never
            values, but a name chosen by a client could echo one).
        """
        text = generate_latest(self.registry)
        if not SECRET_VALUES:
            return text
        return SECRET_VALUES.text(text.decode("utf-8")).encode("utf-8")


class _StateCollector(Collector):
    """
    Reads the gateway's own counters and sizes at scrape time.
    """

    def __init__(self, gateway: GatewayState) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        gateway = self.gateway
        yield GaugeMetricFamily("mcpgateway_sessions", "Live sessions.", value=len(gateway.sessions))
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "info": GaugeMetricFamily(
                "mcpgateway_service_info",
                "1 per service, labelled with its transport: stdio (child processes) or http (a url service).",
                labels=["service", "transport"],
            ),
            "children": GaugeMetricFamily("mcpgateway_children", "Live children, by service.", labels=["service"]),
            "pool": GaugeMetricFamily("mcpgateway_pool_size", "Ready children in the warm pool.", labels=["service"]),
            "failing": GaugeMetricFamily(
                "mcpgateway_service_backoff", "1 while a service backs off after failed starts.", labels=["service"]
            ),
            "spawns": CounterMetricFamily("mcpgateway_spawns", "Children started (or tried).", labels=["service"]),
            "failures": CounterMetricFamily(
                "mcpgateway_start_failures", "Children that failed to start.", labels=["service"]
            ),
            "crashes": CounterMetricFamily(
                "mcpgateway_crashes", "Children that ended without being asked to.", labels=["service"]
            ),
            "restarts": CounterMetricFamily(
                "mcpgateway_session_restarts", "Session children replaced after a crash.", labels=["service"]
            ),
            "stderr": CounterMetricFamily(
                "mcpgateway_stderr_bytes", "Bytes children wrote to stderr.", labels=["service"]
            ),
            "limits": CounterMetricFamily(
                "mcpgateway_child_limit_stops",
                "Children stopped by a sandbox limit, by service and limit (pids, cpu, file_size, memory).",
                labels=["service", "limit"],
            ),
        }
        for name, service in gateway.services.items():
            families["info"].add_metric([name, service.transport], 1)
            families["children"].add_metric([name], len(service.children))
            families["pool"].add_metric([name], service.pool_size)
            families["failing"].add_metric([name], 1 if service.state == "failing" else 0)
            families["spawns"].add_metric([name], service.spawns)
            families["failures"].add_metric([name], service.start_failures)
            families["crashes"].add_metric([name], service.crashes)
            families["restarts"].add_metric([name], gateway.restarts.get(name, 0))
            families["stderr"].add_metric([name], service.stderr_bytes)
            for limit, count in service.limit_stops.items():
                families["limits"].add_metric([name, limit], count)
        yield from families.values()
