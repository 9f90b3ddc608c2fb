"""
A service's tool list, fetched once and shared by every caller: from a
ready child of the warm pool, from the child that announced a change, or
from a short-lived lister child; refetched when a child sends
C{notifications/tools/list_changed}.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError, ensureDeferred, succeed

from mcpgateway.children.child import Child
from mcpgateway.config import ServiceConfig
from mcpgateway.errors import CallTimedOut, ChildFailed
from mcpgateway.lib.deferreds import Shared, observe
from mcpgateway.mcp.exits import ChildExited
from mcpgateway.mcp.jsonrpc import RPCError
from mcpgateway.observe.logs import logger

__all__ = ["ToolCache"]

log = logger("mcpgateway.service")

#: A list that changes while it is fetched is fetched again at most this often.
_MAX_REFETCH = 3


class ToolCache:
    """
    The cached tool list of one service.

    @ivar name: The service's name.
    """

    def __init__(
        self,
        config: ServiceConfig,
        ready_child: Callable[[], Child | None],
        spawn: Callable[[], Coroutine[Any, Any, Child]],
    ) -> None:
        """
        @param config: The service's configuration (timeouts).
        @param ready_child: A live child that may be asked now (the pool's), or L{None}.
        @param spawn: Starts a lister child when no child can be asked.
        """
        self.name = config.name
        self._config = config
        self._ready_child = ready_child
        self._spawn = spawn
        self._tools: list[dict[str, Any]] | None = None
        self._tools_fill: Shared[list[dict[str, Any]]] | None = None
        self._tools_generation = 0
        self._tool_names: frozenset[str] = frozenset()

    @property
    def cached(self) -> list[dict[str, Any]] | None:
        """
        The cached tool list, or L{None} while there is none (never fills it).
        """
        return self._tools

    def declares(self, tool: str) -> bool:
        """
        @return: Whether C{tool} is in the cached tool list the service declared.
        """
        return tool in self._tool_names

    def tools(self) -> Deferred[list[dict[str, Any]]]:
        """
        The service's tools, from the cache, or filled once for all waiting callers.

        @return: Fires with the MCP C{Tool} objects of every page.
        """
        if self._tools is not None:
            return succeed(self._tools)
        if self._tools_fill is None:
            return self._start_fill(None).wait()
        return self._tools_fill.wait()

    def _start_fill(self, source: Child | None) -> Shared[list[dict[str, Any]]]:
        """
        Start filling the tool cache; later callers share it while it runs
        (one that fails at once, e.g. during backoff, is not kept).
        """
        fill = observe(ensureDeferred(self._fill_tools(source)))
        if not fill.done:
            self._tools_fill = fill
        return fill

    async def _fill_tools(self, source: Child | None) -> list[dict[str, Any]]:
        """
        Fetch the tool list from C{source}, or from a short-lived lister child.

        A C{list_changed} that arrives during the fetch (a Node server sends
        one before its first answer) makes it fetch once more from the same
        child, a bounded number of times.
        """
        lister = None
        try:
            if source is None or not source.alive:
                source = self._ready_child()
            if source is None:
                source = lister = await self._spawn()
            for _ in range(_MAX_REFETCH):
                generation = self._tools_generation
                tools = await self._list_from(source)
                if generation == self._tools_generation:
                    break
            self._tools = tools
            self._tool_names = frozenset(str(tool.get("name")) for tool in tools)
            return tools
        finally:
            self._tools_fill = None
            if lister is not None:
                lister.close(self._config.close_grace)

    async def _list_from(self, child: Child) -> list[dict[str, Any]]:
        """
        @raise GatewayError: L{CallTimedOut} or L{ChildFailed} (never a bare
            protocol error), so that C{/tools} answers a JSON 504 or 502.
        """
        timeout = self._config.call_timeout
        try:
            return await child.list_tools(timeout)
        except TimeoutError:
            raise CallTimedOut(f"{self.name} did not list its tools within {timeout:g} s") from None
        except RPCError as error:
            raise ChildFailed(
                f"{self.name} answered tools/list with JSON-RPC error {error.code}: {error.message}"
            ) from None
        except ChildExited as error:
            raise ChildFailed.ended(self.name, "while listing its tools", error.info) from None

    def notified(self, holder: list[Child], method: str, params: dict[str, Any]) -> None:
        """
        A child's notification: C{tools/list_changed} refetches the list
        (from that child, C{holder[0]}, when it is known).
        """
        if method != "notifications/tools/list_changed":
            return
        self._tools_generation += 1
        if self._tools_fill is not None:
            return  # the fill under way sees the new generation and fetches again
        self._tools = None
        source = holder[0] if holder else None
        self._start_fill(source).wait().addErrback(
            lambda f: log.warn("{service}: tool list refresh failed: {e}", service=self.name, e=f.value)
        )
