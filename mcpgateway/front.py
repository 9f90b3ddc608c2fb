"""
The MCP server the gateway shows its clients (the "front door"): one MCP
server that aggregates every enabled service (C{/mcp}) or shows one
(C{/services/<name>/mcp}), in either protocol era.  It knows nothing of
HTTP: L{mcpgateway.streamable} parses requests, keeps the streams and hands
each JSON-RPC request here.

Naming on the aggregate endpoint: a tool (or prompt) C{t} of service C{s} is
C{s.t}.  Service names are C{[A-Za-z0-9_-]}, so the first dot always ends
the service name.  Names longer than 64 characters are shortened
deterministically (C{<first 55 characters>-<8 hex digits of a SHA-256>}) and
collisions are resolved by re-hashing; such names are resolved through the
catalogue.  Resources get the URI C{mcpgw://<service>/<original URI>}.  On a
single-service endpoint every name and URI is the child's own.

Sessions: a legacy client's C{initialize} opens a gateway session
C{mcp-<32 hex digits>} (visible in C{GET /sessions}, reaped when idle, one
child per service it uses, the same limits as REST sessions).  A 2026-07-28
client has no session; each principal gets one gateway session
C{mcp-modern.<principal>} whose children serve all its modern requests until
it is reaped.  REST calls may not name a session id starting with C{mcp-}
(L{mcpgateway.calls.rest_session_id}), so no REST client can squat or use
these sessions; C{GET /sessions} lists them and C{DELETE /sessions/<id>}
closes them like any other.

Lists gathered from every service (C{tools/list}, C{prompts/list},
C{resources/list}, C{resources/templates/list}) ask all services at once,
each bounded by its C{call_timeout}; a service that fails or does not answer
in time is left out (and logged), so the list holds what the others offer.

Every C{tools/call} runs through L{mcpgateway.calls.ToolCalls.run}, as REST
calls do: one span, one C{mcpgateway_tool_call_seconds} sample and one
access-log line each.

Children are wired with the hooks of L{mcpgateway.protocol.ChildProtocol}:
progress notifications are routed by a token the gateway mints per request;
a child's C{sampling}/C{elicitation}/C{roots} requests reach a legacy
client that declared the capability (on the stream of the request waiting on
that child, else on its GET stream), everything else is answered with an
error so that no tool call hangs.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import secrets
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import CancelledError, Deferred, DeferredList, TimeoutError
from twisted.python.failure import Failure

from . import __version__
from .auth import Principal
from .calls import MCP_SESSION_PREFIX, ToolCalls
from .child import Child
from .errors import BadRequest, CallTimedOut, ChildFailed, GatewayError, SessionClosed
from .gateway import Gateway
from .logs import logger
from .protocol import ChildExited, RPCError
from .service import Service
from .sessions import Session

__all__ = [
    "LEGACY_VERSIONS",
    "MODERN_VERSION",
    "Call",
    "Context",
    "Entry",
    "McpClient",
    "McpError",
    "McpFront",
    "Sink",
    "build_catalog",
    "modern_session_id",
    "public_name",
]

log = logger(__name__)

T = TypeVar("T")

LEGACY_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSION = "2026-07-28"
MODERN_VERSIONS = (MODERN_VERSION,)
VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
CLIENT_INFO_KEY = "io.modelcontextprotocol/clientInfo"
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
LOG_LEVEL_KEY = "io.modelcontextprotocol/logLevel"
_ENVELOPE_KEYS = (VERSION_KEY, CAPABILITIES_KEY, CLIENT_INFO_KEY, LOG_LEVEL_KEY)

SEPARATOR = "."
MAX_NAME = 64
_HASH_DIGITS = 8
RESOURCE_PREFIX = "mcpgw://"
MAX_PAGES = 100
_MAX_SESSION_ID = 128
_MAX_CLIENT_NAME = 200

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
REQUEST_TIMEOUT = -32001
RESOURCE_NOT_FOUND = -32002
HEADER_MISMATCH = -32020
UNSUPPORTED_PROTOCOL_VERSION = -32022
REQUEST_CANCELLED = -32800

#: 2026-07-28 results that must carry the caching hints.
CACHEABLE = frozenset(
    {"server/discover", "tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read"}
)
_LIST_PAGED = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}
#: Child requests a legacy client may answer, and the capability it must declare.
_ROUTABLE = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}


class McpError(Exception):
    """
    A JSON-RPC error for the client.

    @ivar code: The JSON-RPC code.
    @ivar message: Its message.
    @ivar data: Its C{data}, or L{None}.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        """
        @return: The C{error} member of a JSON-RPC response.
        """
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def gateway_error(error: GatewayError) -> McpError:
    """
    @return: A gateway failure (limit, start failure, timeout...) as a JSON-RPC error.
    """
    data: dict[str, Any] = {"reason": error.code, "status": error.status, **error.details}
    if error.retry_after is not None:
        data["retry_after"] = round(error.retry_after, 3)
    if isinstance(error, CallTimedOut):
        code = REQUEST_TIMEOUT
    elif error.status == 400:
        code = INVALID_PARAMS
    else:
        code = INTERNAL_ERROR
    return McpError(code, error.message, data)


class Sink(Protocol):
    """
    Somewhere to send messages to the client: the stream answering one of
    its requests, or its GET stream.
    """

    @property
    def open(self) -> bool:
        """
        Whether messages can still be sent.
        """

    def send(self, message: dict[str, Any]) -> bool:
        """
        Send one JSON-RPC message.

        @return: Whether it was written.
        """


# -- naming ----------------------------------------------------------------------------------


def public_name(service: str, name: str, attempt: int = 0) -> str:
    """
    The name a tool or prompt of C{service} has on the aggregate endpoint.

    @param attempt: 0 normally; higher values give other shortened names, to
        resolve collisions.
    @return: C{service.name} when at most 64 characters (and C{attempt} is 0),
        else 64 characters: a prefix of it, C{-}, and 8 hex digits of a hash.
    """
    full = f"{service}{SEPARATOR}{name}"
    if attempt == 0 and len(full) <= MAX_NAME:
        return full
    digest = hashlib.sha256(f"{service}\0{name}\0{attempt}".encode()).hexdigest()[:_HASH_DIGITS]
    return f"{full[: MAX_NAME - _HASH_DIGITS - 1]}-{digest}"


@dataclass(frozen=True)
class Entry:
    """
    One tool or prompt as the client sees it.

    @ivar public: Its name for the client.
    @ivar service: The service offering it.
    @ivar name: Its name in the child.
    @ivar item: The child's description of it.
    """

    public: str
    service: str
    name: str
    item: dict[str, Any]

    def view(self) -> dict[str, Any]:
        """
        @return: The description with the public name.
        """
        return self.item if self.public == self.name else {**self.item, "name": self.public}


def build_catalog(listing: list[tuple[str, list[dict[str, Any]]]], *, scoped: bool) -> list[Entry]:
    """
    Name every item of every service, in listing order.

    Items without a string name and repeated names are skipped.  On the
    aggregate endpoint, names that need shortening are settled after all
    the others (in sorted order), re-hashed until unique.

    @param listing: Each service's items (tools or prompts).
    @param scoped: Whether the endpoint shows one service (names unchanged).
    @return: The entries.
    """
    entries: dict[tuple[str, str], Entry] = {}
    taken: set[str] = set()
    seen: set[tuple[str, str]] = set()
    order: list[tuple[str, str, dict[str, Any]]] = []
    long: list[tuple[str, str, dict[str, Any]]] = []
    for service, items in listing:
        for item in items:
            name = item.get("name")
            if not isinstance(name, str) or not name or (service, name) in seen:
                continue
            seen.add((service, name))
            order.append((service, name, item))
            public = name if scoped else public_name(service, name)
            if scoped or public == f"{service}{SEPARATOR}{name}":
                if public in taken:
                    continue
                taken.add(public)
                entries[(service, name)] = Entry(public, service, name, item)
            else:
                long.append((service, name, item))
    for service, name, item in sorted(long, key=lambda entry: (entry[0], entry[1])):
        for attempt in range(MAX_PAGES):
            public = public_name(service, name, attempt)
            if public not in taken:
                break
            log.warn(
                "{service}: name {name!r} collides as {public!r}; rehashing", service=service, name=name, public=public
            )
        else:
            continue
        taken.add(public)
        entries[(service, name)] = Entry(public, service, name, item)
    return [entries[(service, name)] for service, name, _ in order if (service, name) in entries]


def prefix_uri(service: str, uri: str) -> str:
    """
    @return: The aggregate endpoint's URI for C{uri} of C{service}.
    """
    return f"{RESOURCE_PREFIX}{service}/{uri}"


def modern_session_id(principal: Principal) -> str:
    """
    @return: The gateway session serving C{principal}'s 2026-07-28 requests:
        C{mcp-modern.<name>}, at most 128 characters of C{A-Z a-z 0-9 _ . -};
        a name with other characters, or too long, is followed by (or
        shortened to end with) a hash of it, so two principals never share one.
        REST calls cannot name it (L{mcpgateway.calls.rest_session_id}).
    """
    prefix = f"{MCP_SESSION_PREFIX}modern."
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", principal.name)
    if safe != principal.name or len(prefix) + len(safe) > _MAX_SESSION_ID:
        digest = hashlib.sha256(principal.name.encode()).hexdigest()[:16]
        safe = f"{safe[: _MAX_SESSION_ID - len(prefix) - len(digest) - 1]}.{digest}"
    return prefix + safe


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"mcpgw:{offset}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: Any) -> int:
    if cursor is None:
        return 0
    try:
        text = base64.urlsafe_b64decode(str(cursor) + "=" * (-len(str(cursor)) % 4)).decode()
        kind, _, number = text.partition(":")
        offset = int(number)
    except ValueError:
        offset = -1
        kind = ""
    if kind != "mcpgw" or offset < 0:
        raise McpError(INVALID_PARAMS, f"invalid cursor: {cursor!r}")
    return offset


def _id_key(request_id: Any) -> tuple[str, Any]:
    return (type(request_id).__name__, request_id)


# -- sessions ---------------------------------------------------------------------------------


class Call:
    """
    A client request being answered.

    @ivar request_id: The client's id.
    @ivar sink: Its response stream.
    @ivar task: What answers it (cancelled when the client cancels it).
    @ivar children: Children it is waiting on now.
    @ivar cancelled: Whether the client cancelled it.
    """

    def __init__(self, request_id: Any, sink: Sink) -> None:
        self.request_id = request_id
        self.sink = sink
        self.task: Deferred[Any] | None = None
        self.children: list[Child] = []
        self.cancelled = False


class McpClient:
    """
    A legacy (initialize-handshake) MCP session.

    @ivar id: Its C{Mcp-Session-Id}, also the gateway session's id.
    @ivar principal: Who opened it.
    @ivar scope: The one service it sees, or L{None} for all.
    @ivar version: The negotiated protocol version.
    @ivar capabilities: What the client declared.
    @ivar stream: Its GET stream, if open.
    @ivar calls: Its requests in flight, by id.
    @ivar asks: Child requests sent to it, waiting for its answer, by the
        id the gateway gave them.
    """

    def __init__(
        self, session_id: str, principal: Principal, scope: str | None, version: str, capabilities: dict[str, Any]
    ) -> None:
        self.id = session_id
        self.principal = principal
        self.scope = scope
        self.version = version
        self.capabilities = capabilities
        self.stream: Sink | None = None
        self.calls: dict[tuple[str, Any], Call] = {}
        self.asks: dict[int, Deferred[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self.closed = False

    def begin(self, request_id: Any, sink: Sink) -> Call:
        """
        Register a request in flight.
        """
        call = self.calls[_id_key(request_id)] = Call(request_id, sink)
        return call

    def end(self, call: Call) -> None:
        """
        Forget a request that was answered.
        """
        if self.calls.get(_id_key(call.request_id)) is call:
            del self.calls[_id_key(call.request_id)]

    def cancel(self, request_id: Any) -> bool:
        """
        The client's C{notifications/cancelled}: cancel that request.

        @return: Whether it was in flight.
        """
        if type(request_id) not in (int, str):
            return False  # no request has such an id (and a list or an object is not hashable)
        call = self.calls.get(_id_key(request_id))
        if call is None or call.task is None:
            return False
        call.cancelled = True
        call.task.cancel()
        return True

    def next_ask_id(self) -> int:
        """
        @return: A fresh id for a request to the client.
        """
        return next(self._ids)


@dataclass
class Context:
    """
    What one client request is answered in.

    @ivar principal: The caller.
    @ivar scope: The service of a C{/services/<name>/mcp} endpoint, or L{None}.
    @ivar modern: Whether the client speaks 2026-07-28.
    @ivar session: The gateway session whose children serve it.
    @ivar sink: The stream answering it (progress goes there).
    @ivar client: The legacy session, or L{None} for a modern client.
    @ivar call: The request in flight (legacy), or L{None}.
    """

    principal: Principal
    scope: str | None
    modern: bool
    session: Session
    sink: Sink
    client: McpClient | None = None
    call: Call | None = None


# -- the server ----------------------------------------------------------------------------


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
        self._tokens = itertools.count(1)
        self._adopted: weakref.WeakKeyDictionary[Child, bool] = weakref.WeakKeyDictionary()
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

    def instructions(self, scope: str | None) -> str:
        """
        @return: A sentence about naming, for the client's model.
        """
        if scope is not None:
            return f"The tools, prompts and resources of the MCP server {scope!r}, served by mcpgateway."
        return (
            "Tools and prompts of several MCP servers, named <service>.<name>; resources are "
            "mcpgw://<service>/<uri>. Services: " + ", ".join(sorted(self.gateway.services)) + "."
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
            "instructions": self.instructions(scope),
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

    def _session_closed(self, session: Session) -> None:
        client = self.clients.get(session.id)
        if client is not None:
            self._forget(client)

    def _forget(self, client: McpClient) -> None:
        if self.clients.get(client.id) is client:
            del self.clients[client.id]
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
            "instructions": self.instructions(ctx.scope),
            "_meta": {SERVER_INFO_KEY: self.server_info(ctx.scope)},
        }

    # -- tools ---------------------------------------------------------------------

    def _services(self, ctx: Context) -> list[Service]:
        if ctx.scope is not None:
            return [self.gateway.service(ctx.scope)]
        return list(self.gateway.services.values())

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
            lists = [await self._within(services[0], services[0].tools(), "tools/list")]
        else:
            found = await self._from_each(services, lambda service: service.tools(), "tools/list")
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
        return self._page([entry.view() for entry in catalog], params, "tools")

    def _page(self, items: list[dict[str, Any]], params: dict[str, Any], key: str) -> dict[str, Any]:
        offset = _decode_cursor(params.get("cursor"))
        end = offset + self.page_size
        result: dict[str, Any] = {key: items[offset:end]}
        if end < len(items):
            result["nextCursor"] = _encode_cursor(end)
        return result

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
            return Deferred.fromCoroutine(self._send(ctx, service, "tools/call", outgoing, meta))

        try:
            return await self.calls.run(service, tool, ctx.session.id, ctx.principal, work, _is_tool_error)
        except (GatewayError, RPCError) as error:
            raise _as_mcp_error(error, "tools/call") from None

    # -- prompts -----------------------------------------------------------------

    async def _list_everywhere(self, ctx: Context, method: str) -> list[tuple[str, list[dict[str, Any]]]]:
        """
        The full C{method} list of each service in scope, from the session's
        children; a service that does not offer it contributes nothing.

        On the aggregate endpoint every service is asked at once and one that
        fails or takes longer than its C{call_timeout} (start included) is
        left out and logged; on a single-service endpoint its error is the
        answer.
        """
        key = _LIST_PAGED[method]

        async def one(service: str) -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            cursor: Any = None
            seen: set[str] = set()
            for _ in range(MAX_PAGES):
                try:
                    page = await self.forward(ctx, service, method, {"cursor": cursor} if cursor else {})
                except McpError as error:
                    if error.code == METHOD_NOT_FOUND:
                        return items
                    raise
                found = page.get(key)
                if isinstance(found, list):
                    items.extend(item for item in found if isinstance(item, dict))
                cursor = page.get("nextCursor")
                if not isinstance(cursor, str) or not cursor or cursor in seen:
                    break
                seen.add(cursor)
            return items

        services = self._services(ctx)
        if ctx.scope is not None:
            return [(ctx.scope, await self._within(services[0], Deferred.fromCoroutine(one(ctx.scope)), method))]
        found = await self._from_each(services, lambda service: Deferred.fromCoroutine(one(service.name)), method)
        return [(service.name, items) for service, items in zip(services, found, strict=True) if items is not None]

    async def _within(self, service: Service, work: Deferred[T], what: str) -> T:
        """
        Wait for C{work} (about C{service}) at most its C{call_timeout}, then cancel it.

        @raise McpError: For its failure, or C{REQUEST_TIMEOUT}.
        """
        timeout = service.config.call_timeout
        try:
            return await work.addTimeout(timeout, self.gateway.clock)
        except TimeoutError:
            raise McpError(
                REQUEST_TIMEOUT, f"{service.name} did not answer {what} within {timeout:g} s; the request was cancelled"
            ) from None
        except (GatewayError, RPCError, ChildExited) as error:
            raise _as_mcp_error(error, f"{service.name} could not answer {what}") from None

    async def _from_each(
        self, services: list[Service], fetch: Callable[[Service], Deferred[T]], what: str
    ) -> list[T | None]:
        """
        Run C{fetch} for every service at once, each bounded by the service's
        C{call_timeout}.

        @return: Each service's result, or L{None} for one that failed or
            timed out (logged).
        @raise CancelledError: If the wait was cancelled (the client went away).
        """
        outcomes = await DeferredList(
            [Deferred.fromCoroutine(self._within(service, fetch(service), what)) for service in services],
            consumeErrors=True,
        )
        results: list[T | None] = []
        for service, (ok, value) in zip(services, outcomes, strict=True):
            if ok:
                results.append(value)
                continue
            assert isinstance(value, Failure)
            if value.check(CancelledError):
                value.raiseException()
            log.warn("{service}: left out of {what}: {error}", service=service.name, what=what, error=value.value)
            results.append(None)
        return results

    async def _prompt_catalog(self, ctx: Context) -> list[Entry]:
        return build_catalog(await self._list_everywhere(ctx, "prompts/list"), scoped=ctx.scope is not None)

    async def _list_prompts(self, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        catalog = await self._prompt_catalog(ctx)
        return self._page([entry.view() for entry in catalog], params, "prompts")

    async def _get_prompt(self, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        arguments = params.get("arguments")
        if arguments is not None and not isinstance(arguments, dict):
            raise McpError(INVALID_PARAMS, "params.arguments must be an object")
        service, prompt = await self._resolve(ctx, params.get("name"), "prompt")
        return await self.forward(ctx, service, "prompts/get", {**params, "name": prompt})

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
        for service, found in await self._list_everywhere(ctx, method):
            for item in found:
                uri = item.get(field)
                if ctx.scope is None and isinstance(uri, str):
                    item = {**item, field: prefix_uri(service, uri)}
                items.append(item)
        return self._page(items, params, _LIST_PAGED[method])

    async def _read_resource(self, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        service, uri = self._unprefix(ctx, params.get("uri"))
        result = await self.forward(ctx, service, "resources/read", {**params, "uri": uri})
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
        return await self.forward(ctx, service, "resources/subscribe", {**params, "uri": uri})

    async def _unsubscribe(self, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        service, uri = self._unprefix(ctx, params.get("uri"))
        return await self.forward(ctx, service, "resources/unsubscribe", {**params, "uri": uri})

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
        return await self.forward(ctx, service, "completion/complete", {**params, "ref": ref})

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

    # -- children ----------------------------------------------------------------------

    async def forward(self, ctx: Context, name: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """
        Send C{method} to the session's child of service C{name} and wait for
        its result, relaying progress to the client.

        Cancelling the wait cancels the child's request (the child is sent
        C{notifications/cancelled}).

        @raise McpError: For the child's JSON-RPC error (code, message and
            data kept), a timeout, a dead child or a gateway limit.
        """
        try:
            return await self._send(ctx, name, method, params)
        except (GatewayError, RPCError) as error:
            raise _as_mcp_error(error, method) from None

    async def _send(
        self, ctx: Context, name: str, method: str, params: dict[str, Any], meta: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """
        L{forward}, failing as a REST call does.

        @param meta: C{params._meta} entries for the child (a C{traceparent}).
        @raise RPCError: The child's JSON-RPC error.
        @raise GatewayError: L{CallTimedOut}, L{ChildFailed}, L{SessionClosed},
            L{BadRequest} (params that cannot be sent), or a limit or start
            failure of the gateway.
        """
        if ctx.scope is not None and name != ctx.scope:
            raise BadRequest(f"this endpoint serves only {ctx.scope!r}")
        session = ctx.session
        service = self.gateway.service(name)
        try:
            child, restarted = await self.gateway.child_for(session, name)
        except CancelledError:
            self._if_closed(session)
            raise
        if restarted:
            log.info("MCP session {id}: {service} restarted", id=session.id, service=name)
        self._adopt(ctx, name, child)
        outgoing, token = self._outgoing(ctx, child, params, meta)
        waiting = child.request(method, outgoing)
        session.track(waiting)
        waiting.addTimeout(service.config.call_timeout, self.gateway.clock)
        call = ctx.call
        if call is not None:
            call.children.append(child)
        try:
            return await waiting
        except TimeoutError:
            raise CallTimedOut(
                f"{name} did not answer {method} within {service.config.call_timeout:g} s; the request was cancelled"
            ) from None
        except ChildExited as error:
            raise ChildFailed.ended(name, f"during {method}", error.info) from None
        except CancelledError:
            self._if_closed(session)
            raise
        except ValueError as error:  # the params cannot be written as JSON
            raise BadRequest(f"{method} cannot be sent to {name}: {error}") from None
        finally:
            if token is not None:
                child.protocol.progress_routes.pop(token, None)
            if call is not None and child in call.children:
                call.children.remove(child)

    def _if_closed(self, session: Session) -> None:
        if session.closed:
            raise SessionClosed(f"session {session.id!r} was closed during the request")

    def _outgoing(
        self, ctx: Context, child: Child, params: dict[str, Any], extra: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], str | None]:
        """
        The params for the child: the client's protocol envelope removed, its
        progress token replaced by one the gateway routes back to this request,
        C{extra} added to C{_meta}.
        """
        params = dict(params)
        theirs_meta = params.pop("_meta", None)
        meta = (
            {key: value for key, value in theirs_meta.items() if key not in _ENVELOPE_KEYS}
            if isinstance(theirs_meta, dict)
            else {}
        )
        token = None
        theirs = meta.get("progressToken")
        if isinstance(theirs, (str, int)) and not isinstance(theirs, bool):
            token = f"mcpgw-{next(self._tokens)}"
            meta["progressToken"] = token
            sink = ctx.sink

            def relay(progress: dict[str, Any]) -> None:
                sink.send(
                    {
                        "jsonrpc": "2.0",
                        "method": "notifications/progress",
                        "params": {**progress, "progressToken": theirs},
                    }
                )

            child.protocol.progress_routes[token] = relay
        if extra:
            meta.update(extra)
        if meta:
            params["_meta"] = meta
        return params, token

    def _adopt(self, ctx: Context, service: str, child: Child) -> None:
        """
        Wire a child's hooks to the session it serves (once per child).
        """
        if child in self._adopted:
            return
        self._adopted[child] = True
        client = ctx.client
        child.protocol.listeners.append(
            lambda method, params: self._child_notified(client, service, child, method, params)
        )
        if client is not None:
            child.protocol.request_handler = lambda method, params: self._child_asks(
                client, service, child, method, params
            )

    def _child_notified(
        self, client: McpClient | None, service: str, child: Child, method: str, params: dict[str, Any]
    ) -> None:
        if method == "notifications/tools/list_changed":
            # The service's tool cache (shared by every session) is being
            # refreshed; whoever lists next waits for the fresh list.
            for other in list(self.clients.values()):
                if other.scope in (None, service) and other.stream is not None:
                    other.stream.send({"jsonrpc": "2.0", "method": method})
            return
        if client is None or client.stream is None:
            return
        if method in ("notifications/prompts/list_changed", "notifications/resources/list_changed"):
            client.stream.send({"jsonrpc": "2.0", "method": method})
        elif method == "notifications/resources/updated":
            uri = params.get("uri")
            if client.scope is None and isinstance(uri, str):
                params = {**params, "uri": prefix_uri(service, uri)}
            client.stream.send({"jsonrpc": "2.0", "method": method, "params": params})
        elif method == "notifications/message":
            client.stream.send({"jsonrpc": "2.0", "method": method, "params": params})

    def _child_asks(
        self, client: McpClient, service: str, child: Child, method: str, params: dict[str, Any]
    ) -> Deferred[dict[str, Any]] | None:
        """
        A child's own request: relay it to the legacy client if it declared
        the capability and has a stream; C{None} leaves the built-in answers
        (C{ping} answered, the rest -32601).
        """
        capability = _ROUTABLE.get(method)
        if capability is None:
            return None
        if client.closed or capability not in client.capabilities:
            log.info(
                "{id}: a child asked {method}; the client did not declare {c}",
                id=client.id,
                method=method,
                c=capability,
            )
            return None
        sink = next(
            (call.sink for call in reversed(list(client.calls.values())) if child in call.children and call.sink.open),
            None,
        )
        if sink is None and client.stream is not None and client.stream.open:
            sink = client.stream
        if sink is None:
            log.info("{id}: no stream to relay {method} to the client", id=client.id, method=method)
            return None
        ask_id = client.next_ask_id()
        answer: Deferred[dict[str, Any]] = Deferred()
        client.asks[ask_id] = answer
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": ask_id, "method": method}
        if params:
            message["params"] = params
        if not sink.send(message):
            del client.asks[ask_id]
            return None
        answer.addTimeout(self.gateway.service(service).config.call_timeout, self.gateway.clock)

        def settled(result: Any) -> Any:
            client.asks.pop(ask_id, None)
            if isinstance(result, Failure) and result.check(TimeoutError, CancelledError):
                return Failure(RPCError(REQUEST_TIMEOUT, f"the MCP client did not answer {method} in time"))
            return result

        return answer.addBoth(settled)

    def answered(self, client: McpClient, message: dict[str, Any]) -> None:
        """
        The client's response to a child request relayed to it.
        """
        request_id = message.get("id")
        waiting = client.asks.pop(request_id, None) if type(request_id) is int else None
        if waiting is None:
            log.debug("{id}: a response to no request of ours: {rid!r}", id=client.id, rid=request_id)
            return
        error = message.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            waiting.errback(
                RPCError(
                    code if type(code) is int else INTERNAL_ERROR, str(error.get("message", "")), error.get("data")
                )
            )
        else:
            result = message.get("result")
            waiting.callback(result if isinstance(result, dict) else {})


def _is_tool_error(result: dict[str, Any]) -> bool:
    return result.get("isError") is True


def _as_mcp_error(error: Exception, what: str) -> McpError:
    if isinstance(error, GatewayError):
        return gateway_error(error)
    if isinstance(error, RPCError):
        return McpError(error.code, error.message, error.data)
    return McpError(INTERNAL_ERROR, f"{what}: {error}")
