"""
Requests the front door forwards to the children of a client's gateway
session, and what those children send back.

Children are wired with the hooks of L{mcpgateway.mcp.stdio.ChildProtocol}:
progress notifications are routed by a token the gateway mints per request;
a child's C{sampling}/C{elicitation}/C{roots} requests reach a legacy
client that declared the capability (on the stream of the request waiting on
that child, else on its GET stream), everything else is answered with an
error so that no tool call hangs.

Lists gathered from every service ask all services at once, each bounded by
its C{call_timeout}; a service that fails or does not answer in time is left
out (and logged), so the list holds what the others offer.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred, DeferredList, TimeoutError
from twisted.python.failure import Failure

from mcpgateway.children.child import Child
from mcpgateway.children.service import Service
from mcpgateway.errors import BadRequest, CallTimedOut, ChildFailed, GatewayError, ServiceUnavailable, SessionClosed
from mcpgateway.front.catalog import MAX_PAGES, prefix_uri
from mcpgateway.front.client import Context, McpClient
from mcpgateway.front.errors import McpError, as_mcp_error
from mcpgateway.gateway import Gateway
from mcpgateway.mcp.exits import ChildExited, Unreachable
from mcpgateway.mcp.jsonrpc import RPCError
from mcpgateway.mcp.spec import ENVELOPE_KEYS, INTERNAL_ERROR, METHOD_NOT_FOUND, REQUEST_TIMEOUT
from mcpgateway.observe.logs import logger
from mcpgateway.sessions import Session

__all__ = ["LIST_PAGED", "Relay"]

log = logger("mcpgateway.front")

T = TypeVar("T")

#: The list methods gathered from every service, and their result member.
LIST_PAGED = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}
#: Child requests a legacy client may answer, and the capability it must declare.
_ROUTABLE = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}


class Relay:
    """
    Forwards a client's requests to its session's children and routes what
    they send back.

    @ivar gateway: Whose sessions and children.
    @ivar clients: The front door's legacy sessions, by id (told of list changes).
    """

    def __init__(self, gateway: Gateway, clients: dict[str, McpClient]) -> None:
        self.gateway = gateway
        self.clients = clients
        self._tokens = itertools.count(1)
        self._adopted: weakref.WeakKeyDictionary[Child, bool] = weakref.WeakKeyDictionary()

    def services_in(self, ctx: Context) -> list[Service]:
        """
        @return: The services a request of C{ctx} sees.
        """
        if ctx.scope is not None:
            return [self.gateway.service(ctx.scope)]
        return list(self.gateway.services.values())

    async def list_everywhere(self, ctx: Context, method: str) -> list[tuple[str, list[dict[str, Any]]]]:
        """
        The full C{method} list of each service in scope, from the session's
        children; a service that does not offer it contributes nothing.

        On the aggregate endpoint every service is asked at once and one that
        fails or takes longer than its C{call_timeout} (start included) is
        left out and logged; on a single-service endpoint its error is the
        answer.
        """
        key = LIST_PAGED[method]

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

        services = self.services_in(ctx)
        if ctx.scope is not None:
            return [(ctx.scope, await self.within(services[0], Deferred.fromCoroutine(one(ctx.scope)), method))]
        found = await self.from_each(services, lambda service: Deferred.fromCoroutine(one(service.name)), method)
        return [(service.name, items) for service, items in zip(services, found, strict=True) if items is not None]

    async def within(self, service: Service, work: Deferred[T], what: str) -> T:
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
            raise as_mcp_error(error, f"{service.name} could not answer {what}") from None

    async def from_each(
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
            [Deferred.fromCoroutine(self.within(service, fetch(service), what)) for service in services],
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
            return await self.send(ctx, name, method, params)
        except (GatewayError, RPCError) as error:
            raise as_mcp_error(error, method) from None

    async def send(
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
            child, restarted = await self.gateway.child_for(session, name, ctx.principal)
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
        except Unreachable as error:
            raise ServiceUnavailable(
                f"the {name} server {error.info.describe()}; {method} was not sent",
                retry_after=service.config.backoff_initial,
                service=name,
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
            {key: value for key, value in theirs_meta.items() if key not in ENVELOPE_KEYS}
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
