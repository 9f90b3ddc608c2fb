"""
The MCP server the gateway shows its clients (the "front door"): one MCP
server that aggregates every enabled service (C{/mcp}) or shows one
(C{/services/<name>/mcp}), in either protocol era.  It knows nothing of
HTTP: L{mcpgateway.http.streamable} parses requests, keeps the streams and
hands each JSON-RPC request to L{McpFront.dispatch}.

Naming and pagination: L{mcpgateway.front.catalog}.  Forwarding to children
and what they send back: L{mcpgateway.front.relay}.

Sessions: a legacy client's C{initialize} opens a gateway session
C{mcp-<32 hex digits>} (visible in C{GET /sessions}, reaped when idle, one
child per service it uses, the same limits as REST sessions).  A 2026-07-28
client has no session; each principal gets one gateway session
C{mcp-modern.<principal>} whose children serve all its modern requests until
it is reaped.  REST calls may not name a session id starting with C{mcp-}
(L{mcpgateway.calls.rest_session_id}), so no REST client can squat or use
these sessions; C{GET /sessions} lists them and C{DELETE /sessions/<id>}
closes them like any other.

Every C{tools/call} runs through L{mcpgateway.calls.ToolCalls.run}, as REST
calls do: one span, one C{mcpgateway_tool_call_seconds} sample and one
access-log line each.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred

from mcpgateway import __version__
from mcpgateway.calls import MCP_SESSION_PREFIX, CallRequest, ToolCalls
from mcpgateway.errors import GatewayError
from mcpgateway.front.catalog import MAX_NAME, RESOURCE_PREFIX, SEPARATOR, Entry, build_catalog, page, prefix_uri
from mcpgateway.front.client import Context, McpClient, modern_session_id
from mcpgateway.front.errors import McpError, as_mcp_error
from mcpgateway.front.relay import LIST_PAGED, Relay
from mcpgateway.gateway import Gateway
from mcpgateway.mcp.jsonrpc import RPCError
from mcpgateway.mcp.spec import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    LEGACY_VERSIONS,
    METHOD_NOT_FOUND,
    MODERN_VERSION,
    MODERN_VERSIONS,
    RESOURCE_NOT_FOUND,
    SERVER_INFO_KEY,
)
from mcpgateway.observe.logs import logger
from mcpgateway.policy.auth import Principal
from mcpgateway.sessions import Session

__all__ = ["CACHEABLE", "McpFront"]

log = logger("mcpgateway.front")

_MAX_CLIENT_NAME = 200

#: 2026-07-28 results that must carry the caching hints.
CACHEABLE = frozenset(
    {"server/discover", "tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read"}
)


class McpFront:
    """
    The gateway's MCP server: sessions, catalogue, routing.

    @ivar page_size: Items per page of the lists the gateway paginates.
    @ivar clients: The legacy sessions, by id.
    @ivar calls: Runs and records C{tools/call} (shared with the REST API).
    """

    page_size = 100

    def __init__(self, gateway: Gateway, calls: ToolCalls) -> None:
        self.gateway = gateway
        self.calls = calls
        self.clients: dict[str, McpClient] = {}
        self.relay = Relay(gateway, self.clients)
        self._memo: dict[str | None, tuple[list[list[dict[str, Any]]], list[Entry]]] = {}
        gateway.session_closed.append(self._session_closed)

    # -- sessions ------------------------------------------------------------------

    def capabilities(self, modern: bool) -> dict[str, Any]:
        """
        @return: The server capabilities the gateway declares.
        """
        if modern:
            return {"tools": {}, "prompts": {}, "resources": {}, "completions": {}}
        return {
            "tools": {"listChanged": True},
            "prompts": {"listChanged": True},
            "resources": {"listChanged": True, "subscribe": True},
            "completions": {},
        }

    def server_info(self, scope: str | None) -> dict[str, Any]:
        """
        @return: The gateway's C{serverInfo}.
        """
        name = "mcpgateway" if scope is None else f"mcpgateway/{scope}"
        return {"name": name, "version": __version__}

    def instructions(self, scope: str | None, principal: Principal) -> str:
        """
        @return: A sentence about naming, for the client's model, naming the
            services C{principal} may see.
        """
        if scope is not None:
            return f"The tools, prompts and resources of the MCP server {scope!r}, served by mcpgateway."
        services = self.calls.visible_services(principal, self.gateway.services)
        return (
            "Tools and prompts of several MCP servers, named <service>.<name>; resources are "
            "mcpgw://<service>/<uri>. Services: " + ", ".join(sorted(services)) + "."
        )

    def initialize(
        self, principal: Principal, scope: str | None, params: dict[str, Any]
    ) -> tuple[McpClient, dict[str, Any]]:
        """
        A legacy C{initialize}: open a session.

        @return: The session and the InitializeResult.
        @raise McpError: If the params are unusable.
        @raise GatewayError: If the session limit is reached.
        """
        requested = params.get("protocolVersion")
        if not isinstance(requested, str):
            raise McpError(INVALID_PARAMS, "initialize needs params.protocolVersion, a string")
        version = requested if requested in LEGACY_VERSIONS else LEGACY_VERSIONS[-1]
        capabilities = params.get("capabilities")
        info = params.get("clientInfo")
        session_id = MCP_SESSION_PREFIX + secrets.token_hex(16)
        metadata: dict[str, Any] = {
            "transport": "mcp",
            "protocol": version,
            "endpoint": "/mcp" if scope is None else f"/services/{scope}/mcp",
        }
        if isinstance(info, dict) and isinstance(info.get("name"), str):
            metadata["client"] = info["name"][:_MAX_CLIENT_NAME]
        self.gateway.open_session(session_id, principal, self.gateway.config.session.default_timeout, metadata)
        client = McpClient(
            session_id, principal, scope, version, capabilities if isinstance(capabilities, dict) else {}
        )
        self.clients[session_id] = client
        result = {
            "protocolVersion": version,
            "capabilities": self.capabilities(False),
            "serverInfo": self.server_info(scope),
            "instructions": self.instructions(scope, principal),
        }
        log.info("MCP session {id} opened by {who} ({version})", id=session_id, who=principal.name, version=version)
        return client, result

    def client(self, session_id: str, principal: Principal) -> tuple[McpClient, Session] | None:
        """
        @return: The legacy session C{session_id} and its gateway session, if
            both are alive and C{principal} may use them; marked used now.
        """
        client = self.clients.get(session_id)
        if client is None:
            return None
        session = self.gateway.sessions.get(session_id, principal)
        if session is None or session.closed:
            if self.gateway.sessions.get(session_id) is None:
                self._forget(client)
            return None
        session.last_accessed = self.gateway.clock.seconds()
        return client, session

    def close(self, client: McpClient) -> None:
        """
        End a legacy session (C{DELETE}): its children are stopped.
        """
        if self.gateway.sessions.get(client.id) is not None:
            self.gateway.close_session(client.id, client.principal)
        self._forget(client)

    def modern_session(self, principal: Principal) -> Session:
        """
        @return: The gateway session serving C{principal}'s modern requests, marked used now.
        """
        return self.gateway.open_session(
            modern_session_id(principal),
            principal,
            self.gateway.config.session.default_timeout,
            {"transport": "mcp", "protocol": MODERN_VERSION},
        )

    def answered(self, client: McpClient, message: dict[str, Any]) -> None:
        """
        The client's response to a child request relayed to it.
        """
        self.relay.answered(client, message)

    def _session_closed(self, session: Session) -> None:
        client = self.clients.get(session.id)
        if client is not None:
            self._forget(client)

    def _forget(self, client: McpClient) -> None:
        if self.clients.get(client.id) is client:
            del self.clients[client.id]
        if client.closed:
            return  # DELETE closes the gateway session, whose listener got here first
        client.closed = True
        asks, client.asks = client.asks, {}
        for waiting in asks.values():
            waiting.errback(RPCError(INTERNAL_ERROR, "the MCP session was closed"))
        stream, client.stream = client.stream, None
        if stream is not None:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        log.info("MCP session {id} ended", id=client.id)

    # -- requests ------------------------------------------------------------------

    async def dispatch(self, ctx: Context, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """
        Answer one client request.

        @return: The result, shaped for the client's era.
        @raise McpError: For an error answer.
        """
        handler = self._methods.get(method)
        if handler is None or (method == "server/discover" and not ctx.modern):
            raise McpError(METHOD_NOT_FOUND, f"Method not found: {method}", method)
        try:
            result = await handler(self, ctx, params)
        except (McpError, GatewayError, CancelledError):
            raise
        except Exception:
            log.failure("unexpected error answering {method}", method=method)
            raise McpError(INTERNAL_ERROR, f"internal error answering {method} (logged)") from None
        finally:
            ctx.session.last_accessed = self.gateway.clock.seconds()
        return self.shape(ctx, method, result)

    def shape(self, ctx: Context, method: str, result: dict[str, Any]) -> dict[str, Any]:
        """
        Make a result fit the client's era (whatever the child's).
        """
        result = dict(result)
        if ctx.modern:
            result.setdefault("resultType", "complete")
            if method in CACHEABLE:
                result.setdefault("ttlMs", 0)
                result.setdefault("cacheScope", "private")
            return result
        kind = result.pop("resultType", None)
        if kind not in (None, "complete"):
            raise McpError(
                INTERNAL_ERROR,
                f"the MCP server answered with resultType {kind!r}, which the initialize-handshake protocol"
                " cannot carry; use a 2026-07-28 client",
            )
        result.pop("ttlMs", None)
        result.pop("cacheScope", None)
        return result

    async def _ping(self, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def _discover(self, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "supportedVersions": list(MODERN_VERSIONS),
            "capabilities": self.capabilities(True),
            "instructions": self.instructions(ctx.scope, ctx.principal),
            "_meta": {SERVER_INFO_KEY: self.server_info(ctx.scope)},
        }

    # -- tools ---------------------------------------------------------------------

    async def tool_catalog(self, scope: str | None) -> list[Entry]:
        """
        Every tool of the services in C{scope}, named for the client, from the
        services' caches (filled once if needed).  On the aggregate endpoint a
        service that cannot list its tools within its C{call_timeout} is left
        out (and logged); a fill it started goes on for later lists.
        """
        services = [self.gateway.service(scope)] if scope is not None else list(self.gateway.services.values())
        lists: list[list[dict[str, Any]]]
        if scope is not None:
            lists = [await self.relay.within(services[0], services[0].tools(), "tools/list")]
        else:
            found = await self.relay.from_each(services, lambda service: service.tools(), "tools/list")
            lists = [items if items is not None else [] for items in found]
        memo = self._memo.get(scope)
        if memo is not None and len(memo[0]) == len(lists) and all(a is b for a, b in zip(memo[0], lists, strict=True)):
            return memo[1]
        catalog = build_catalog(
            [(s.name, tools) for s, tools in zip(services, lists, strict=True)], scoped=scope is not None
        )
        self._memo[scope] = (lists, catalog)
        return catalog

    async def _list_tools(self, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        catalog = await self.tool_catalog(ctx.scope)
        visible = self.calls.visible
        entries = [entry.view() for entry in catalog if visible(ctx.principal, entry.service, entry.name)]
        return self._page(entries, params, "tools")

    def _page(self, items: list[dict[str, Any]], params: dict[str, Any], key: str) -> dict[str, Any]:
        return page(items, params, key, self.page_size)

    async def _resolve(self, ctx: Context, public: Any, kind: str) -> tuple[str, str]:
        """
        @return: The service and the child's name for the client's name C{public}.
        """
        if not isinstance(public, str) or not public:
            raise McpError(INVALID_PARAMS, f"params.name must be a non-empty string (the {kind} name)")
        if ctx.scope is not None:
            return ctx.scope, public
        service, dot, name = public.partition(SEPARATOR)
        direct = bool(dot and name and service in self.gateway.services)
        if len(public) != MAX_NAME:
            # Only a name of exactly MAX_NAME characters may be a shortened
            # one; any other is in the catalogue only as itself, so a
            # malformed name is refused without listing (or starting) anything.
            if direct:
                return service, name
            raise McpError(INVALID_PARAMS, f"Unknown {kind}: {public}")
        catalog = await (self.tool_catalog(None) if kind == "tool" else self._prompt_catalog(ctx))
        for entry in catalog:
            if entry.public == public:
                return entry.service, entry.name
        if direct:
            return service, name
        raise McpError(INVALID_PARAMS, f"Unknown {kind}: {public}")

    async def _call_tool(self, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        arguments = params.get("arguments")
        if arguments is not None and not isinstance(arguments, dict):
            raise McpError(INVALID_PARAMS, "params.arguments must be an object")
        service, tool = await self._resolve(ctx, params.get("name"), "tool")
        outgoing = {**params, "name": tool}

        def work(meta: dict[str, Any]) -> Deferred[dict[str, Any]]:
            return Deferred.fromCoroutine(self.relay.send(ctx, service, "tools/call", outgoing, meta))

        request = CallRequest(ctx.principal, service, tool, arguments or {}, ctx.session.id, "mcp", ctx.address)
        try:
            return await self.calls.run(request, work, _is_tool_error)
        except (GatewayError, RPCError) as error:
            raise as_mcp_error(error, "tools/call") from None

    # -- prompts -----------------------------------------------------------------

    async def _prompt_catalog(self, ctx: Context) -> list[Entry]:
        return build_catalog(await self.relay.list_everywhere(ctx, "prompts/list"), scoped=ctx.scope is not None)

    async def _list_prompts(self, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        catalog = await self._prompt_catalog(ctx)
        return self._page([entry.view() for entry in catalog], params, "prompts")

    async def _get_prompt(self, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        arguments = params.get("arguments")
        if arguments is not None and not isinstance(arguments, dict):
            raise McpError(INVALID_PARAMS, "params.arguments must be an object")
        service, prompt = await self._resolve(ctx, params.get("name"), "prompt")
        return await self.relay.forward(ctx, service, "prompts/get", {**params, "name": prompt})

    # -- resources -------------------------------------------------------------------

    def _unprefix(self, ctx: Context, uri: Any) -> tuple[str, str]:
        if not isinstance(uri, str) or not uri:
            raise McpError(INVALID_PARAMS, "params.uri must be a non-empty string")
        if ctx.scope is not None:
            return ctx.scope, uri
        service, slash, original = uri[len(RESOURCE_PREFIX) :].partition("/")
        if not uri.startswith(RESOURCE_PREFIX) or not slash or service not in self.gateway.services:
            raise McpError(RESOURCE_NOT_FOUND, f"Resource not found: {uri} (expected {RESOURCE_PREFIX}<service>/<uri>)")
        return service, original

    async def _list_resources(self, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        return await self._list_uris(ctx, params, "resources/list", "uri")

    async def _list_templates(self, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        return await self._list_uris(ctx, params, "resources/templates/list", "uriTemplate")

    async def _list_uris(self, ctx: Context, params: dict[str, Any], method: str, field: str) -> dict[str, Any]:
        items = []
        for service, found in await self.relay.list_everywhere(ctx, method):
            for item in found:
                uri = item.get(field)
                if ctx.scope is None and isinstance(uri, str):
                    item = {**item, field: prefix_uri(service, uri)}
                items.append(item)
        return self._page(items, params, LIST_PAGED[method])

    async def _read_resource(self, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        service, uri = self._unprefix(ctx, params.get("uri"))
        result = await self.relay.forward(ctx, service, "resources/read", {**params, "uri": uri})
        contents = result.get("contents")
        if ctx.scope is None and isinstance(contents, list):
            result = {
                **result,
                "contents": [
                    {**item, "uri": prefix_uri(service, item["uri"])}
                    if isinstance(item, dict) and isinstance(item.get("uri"), str)
                    else item
                    for item in contents
                ],
            }
        return result

    async def _subscribe(self, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        service, uri = self._unprefix(ctx, params.get("uri"))
        return await self.relay.forward(ctx, service, "resources/subscribe", {**params, "uri": uri})

    async def _unsubscribe(self, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        service, uri = self._unprefix(ctx, params.get("uri"))
        return await self.relay.forward(ctx, service, "resources/unsubscribe", {**params, "uri": uri})

    async def _complete(self, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        ref = params.get("ref")
        if not isinstance(ref, dict):
            raise McpError(INVALID_PARAMS, "params.ref must be an object")
        if ref.get("type") == "ref/prompt":
            service, name = await self._resolve(ctx, ref.get("name"), "prompt")
            ref = {**ref, "name": name}
        elif ref.get("type") == "ref/resource":
            service, uri = self._unprefix(ctx, ref.get("uri"))
            ref = {**ref, "uri": uri}
        else:
            raise McpError(INVALID_PARAMS, "params.ref.type must be ref/prompt or ref/resource")
        return await self.relay.forward(ctx, service, "completion/complete", {**params, "ref": ref})

    _methods: dict[str, Callable[[McpFront, Context, dict[str, Any]], Any]] = {
        "ping": _ping,
        "server/discover": _discover,
        "tools/list": _list_tools,
        "tools/call": _call_tool,
        "prompts/list": _list_prompts,
        "prompts/get": _get_prompt,
        "resources/list": _list_resources,
        "resources/templates/list": _list_templates,
        "resources/read": _read_resource,
        "resources/subscribe": _subscribe,
        "resources/unsubscribe": _unsubscribe,
        "completion/complete": _complete,
    }


def _is_tool_error(result: dict[str, Any]) -> bool:
    return result.get("isError") is True
