"""
Forwarding a session's requests to the gateway process that owns it.

L{Fleet.route} asks the L{Placement} where a session lives; when another
process owns it, the request is sent there as it came (method, path, body,
the headers that matter, and who this gateway admitted the caller as, which
the owner takes without verifying or counting the credentials again) over a
persistent HTTP connection (Twisted's L{Agent} on an L{HTTPConnectionPool},
one endpoint per owner), and the owner's answer is returned unchanged:
status, body and its relevant headers, streamed (an MCP
C{text/event-stream} answer reaches the client as it is written).

Gateways prove they are fleet members with the shared secret
(C{cluster.secret}) in L{FORWARDED_HEADER}, compared in constant time.  A
forwarded request is served where it lands, never forwarded again (the loop
guard); if that process is not the owner after all (the sender's cache was
stale) it answers 421 naming the owner in L{OWNER_HEADER}, and the sender
asks the directory again once.

An owner that cannot be reached (its process died, its host is gone) took
its sessions' children with it: the call is answered 503 C{session_lost},
the directory entry removed, so a retry of the call starts a new session.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectError, ConnectingCancelledError, ConnectionRefusedError, TimeoutError
from twisted.internet.interfaces import IConsumer, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web._newclient import RequestTransmissionFailed, ResponseNeverReceived
from twisted.web.client import URI, Agent, HTTPConnectionPool, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IRequest, IResponse
from zope.interface import implementer

from mcpgateway.cluster.directory import DirectoryUnavailable, address_of
from mcpgateway.cluster.placement import Misdirected, Placement, directory_unreachable, session_lost
from mcpgateway.errors import Forbidden, GatewayError, ServiceUnavailable
from mcpgateway.observe.logs import logger
from mcpgateway.policy.auth import Principal

__all__ = ["FORWARDED_HEADER", "OWNER_HEADER", "PRINCIPAL_HEADER", "Fleet", "WrongOwner"]

log = logger("mcpgateway.cluster")

#: Carries the shared secret on a request one gateway forwards to another.
FORWARDED_HEADER = b"X-Mcpgateway-Forwarded"
#: On a 421 answer to a forwarded request: the owner the directory names.
OWNER_HEADER = b"X-Mcpgateway-Owner"
#: The original client's address, for the owner's logs.
CLIENT_HEADER = b"X-Mcpgateway-Client"
#: Who the forwarding gateway admitted (JSON: name, role, roles): the owner
#: does not verify the credentials again, nor count them.
PRINCIPAL_HEADER = b"X-Mcpgateway-Principal"

#: Request headers passed on to the owner (lower case).
_REQUEST_HEADERS = (
    b"authorization",
    b"content-type",
    b"accept",
    b"mcp-session-id",
    b"mcp-protocol-version",
    b"mcp-method",
    b"mcp-name",
    b"origin",
    b"last-event-id",
    b"traceparent",
    b"tracestate",
    b"user-agent",
)
#: Response headers passed back to the client (the security headers are this process's own).
_RESPONSE_HEADERS = (
    b"content-type",
    b"content-length",
    b"retry-after",
    b"www-authenticate",
    b"mcp-session-id",
    b"allow",
    b"cache-control",
)
#: Seconds an idle connection to another gateway is kept (below the default C{server.idle_timeout}).
IDLE_CONNECTION_SECONDS = 30
#: Connections kept per owner.
CONNECTIONS_PER_OWNER = 32
#: Owners' endpoints kept before the cache is emptied (owners come and go with restarts).
_ENDPOINTS_KEPT = 1000
#: A stale kept-alive connection: the request never reached the owner, so it may be sent again.
_NOT_SENT = (ResponseNeverReceived, RequestTransmissionFailed)
#: The owner cannot be reached, or went away with the call.
_UNREACHABLE = (ConnectError, ConnectingCancelledError, TimeoutError, ResponseFailed, *_NOT_SENT)


@implementer(IBodyProducer)
class _Body:
    """
    A request body written at once (treq's producer goes through a cooperator).
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Relay(Protocol):
    """
    Hands each part of a response body to C{write} as it arrives.
    """

    def __init__(self, write: Callable[[bytes], object], done: Deferred[None]) -> None:
        self.write = write
        self.done = done

    def dataReceived(self, data: bytes) -> None:
        self.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


def _deliver(response: IResponse, write: Callable[[bytes], object]) -> Deferred[None]:
    """
    @return: Fires once C{response}'s body has all been given to C{write}.
    """
    done: Deferred[None] = Deferred()
    response.deliverBody(_Relay(write, done))
    return done


def _passed_on_unreachable() -> ServiceUnavailable:
    """
    @return: The 503 for a new session a draining process passed on to a
        process it could not reach (nothing lived there yet: a retry).
    """
    return ServiceUnavailable(
        "this gateway is draining and the one it passed the new session to cannot be reached; retry",
        "draining",
        retry_after=1,
    )


def _body_of(request: IRequest) -> bytes:
    """
    @return: C{request}'s body, read again from its start.
    """
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    return bytes(content.read())


@implementer(IAgentEndpointFactory)
class _Owners:
    """
    One endpoint per owner, made once: L{Agent}'s own factory builds a new
    L{HostnameEndpoint} (IDNA-encoding its host) for every request, even
    when a kept-alive connection then serves it.
    """

    def __init__(self, reactor: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._endpoints: dict[tuple[bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            if len(self._endpoints) >= _ENDPOINTS_KEPT:
                self._endpoints.clear()
            endpoint = self._endpoints[key] = HostnameEndpoint(
                self._reactor, uri.host, uri.port, timeout=self._connect_timeout
            )
        return endpoint


class WrongOwner(GatewayError):
    """
    421: a forwarded request reached a process that does not own the
    session (only ever seen by another gateway, which asks again).
    """

    status = 421
    code = "misdirected"


class Fleet:
    """
    The gateways this process forwards to.

    @ivar placement: Where sessions live.
    """

    def __init__(self, placement: Placement, secret: str, reactor: Any, connect_timeout: float) -> None:
        """
        @param placement: Where sessions live.
        @param secret: C{cluster.secret}.
        @param reactor: Connects to the owners (an L{IReactorTCP} and L{IReactorTime}).
        @param connect_timeout: Seconds to reach an owner before its sessions count as lost.
        """
        self.placement = placement
        self._secret = secret.encode()
        self._connect_timeout = connect_timeout
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = CONNECTIONS_PER_OWNER
        self.pool.cachedConnectionTimeout = int(IDLE_CONNECTION_SECONDS)
        self.pool.retryAutomatically = False  # _forward decides what may be sent again
        #: The hot path: Agent itself (treq's URL handling and its
        #: cooperative body producer cost more than the rest of a forward).
        self.agent = Agent.usingEndpointFactory(reactor, _Owners(reactor, connect_timeout), pool=self.pool)
        self.http = HTTPClient(self.agent)

    def forwarded(self, request: IRequest) -> bool:
        """
        @return: Whether another gateway forwarded C{request}.
        @raise Forbidden: If it claims so with a wrong secret.
        """
        value = request.getHeader(FORWARDED_HEADER)
        if value is None:
            return False
        if hmac.compare_digest(value, self._secret):
            return True
        raise Forbidden(f"{FORWARDED_HEADER.decode()} is for the gateways of one fleet; this one is wrong", "forbidden")

    def principal_of(self, request: IRequest) -> Principal | None:
        """
        @return: The principal another gateway admitted C{request} as, or
            L{None} if it was not forwarded (or names none).
        @raise Forbidden: If it claims to be forwarded with a wrong secret.
        """
        raw = request.getHeader(PRINCIPAL_HEADER)
        if raw is None or not self.forwarded(request):
            return None
        try:
            fields = json.loads(raw)
            roles = fields.get("roles", [])
            if not (isinstance(fields["name"], str) and fields["role"] in ("admin", "agent")):
                return None
            if not (isinstance(roles, list) and all(isinstance(role, str) for role in roles)):
                return None
            return Principal(fields["name"], fields["role"], tuple(roles))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def client_of(self, request: IRequest, peer: str) -> str:
        """
        @param peer: The connection's peer address.
        @return: The original client's address of a forwarded request, else C{peer}.
        """
        original = request.getHeader(CLIENT_HEADER)
        if original and self.forwarded(request):
            return str(original.decode("latin-1"))[:64]
        return peer

    async def serve(
        self,
        request: IRequest,
        session_id: str,
        principal: Principal,
        peer: str,
        here: Callable[[str], Awaitable[bytes]],
    ) -> bytes:
        """
        Answer a call that may open C{session_id}: at its owner (forwarded),
        or here with C{here}.  A call served here that fails before its
        session opened releases the claim it made (L{Placement.abandon}),
        unless another call of the session is under way here.

        @param peer: The connection's peer address.
        @param here: Serves the call in this process, given the client's address.
        @return: The answer's body.
        """
        placement = self.placement
        with placement.calling(session_id):
            forwarded = await self.route(request, session_id, create=True, principal=principal)
            if forwarded is not None:
                return forwarded
            try:
                return await here(self.client_of(request, peer))
            except Exception:
                await placement.abandon(session_id)
                raise

    async def route(
        self,
        request: IRequest,
        session_id: str,
        *,
        create: bool,
        principal: Principal | None = None,
        body: bytes | None = None,
    ) -> bytes | None:
        """
        Serve C{request} here (L{None}), or forward it to the owner of
        C{session_id} and answer with the owner's answer.

        @param create: Whether the request may create the session.
        @param principal: Who this gateway admitted the request as: the owner takes its word.
        @param body: The request body (read from C{request.content} if L{None}).
        @return: L{None} to serve here, else the body already written (C{b""}).
        @raise WrongOwner: For a forwarded request of another owner.
        @raise ServiceUnavailable: C{session_lost} if the owner cannot be
            reached, C{cluster_unavailable} if Redis cannot.
        """
        forwarded = self.forwarded(request)
        try:
            owner = await self.placement.owner_for(session_id, create=create, forwarded=forwarded)
        except Misdirected as wrong:
            self.placement.forwards["misdirected"] += 1
            request.setHeader(OWNER_HEADER, wrong.owner.encode())
            raise WrongOwner(f"session {session_id!r} belongs to {wrong.owner}", owner=wrong.owner) from None
        if owner is None:
            return None
        return await self._forward(
            request, session_id, owner, _body_of(request) if body is None else body, create, principal
        )

    async def pass_on(self, request: IRequest, principal: Principal) -> bytes | None:
        """
        This process drains, and refused C{request}, which would open a new
        session without naming it (an MCP C{initialize}: the process that
        serves it mints the id and claims it; a 2026-07-28 request): send it
        to a process that takes new sessions, and answer with its answer.

        @param principal: Who this gateway admitted the request as.
        @return: L{None} to refuse it here (no other process, Redis cannot
            be asked, or another gateway forwarded it: the loop guard), else
            the body already written (C{b""}).
        @raise ServiceUnavailable: C{draining} if that process cannot be reached.
        """
        if self.forwarded(request):
            return None
        headers, body = self._headers(request, principal), _body_of(request)
        chosen_again = False
        while True:
            try:
                address = await self.placement.elsewhere()
            except DirectoryUnavailable as error:
                directory_unreachable(error)
                return None
            if address is None:
                return None
            try:
                response = await self._send(request, address, headers, body)
                break
            except CancelledError:
                raise
            except _UNREACHABLE as error:
                if isinstance(error, ConnectionRefusedError):
                    await self.placement.gone(address)
                    if not chosen_again:  # it never reached a process: choose another
                        chosen_again = True
                        continue
                raise _passed_on_unreachable() from None
        self.placement.forwards["answered"] += 1
        await self._answer(request, response, address)
        return b""

    def _headers(self, request: IRequest, principal: Principal | None) -> Headers:
        """
        @return: The headers of C{request} sent on to another gateway.
        """
        headers = Headers()
        for name in _REQUEST_HEADERS:
            value = request.getHeader(name)
            if value is not None:
                headers.setRawHeaders(name, [value])
        headers.setRawHeaders(FORWARDED_HEADER, [self._secret])
        if principal is not None:
            admitted = {"name": principal.name, "role": principal.role, "roles": list(principal.roles)}
            headers.setRawHeaders(PRINCIPAL_HEADER, [json.dumps(admitted).encode()])
        peer = getattr(request.getClientAddress(), "host", "-")
        headers.setRawHeaders(CLIENT_HEADER, [self.client_of(request, str(peer)).encode()])
        return headers

    async def _send(self, request: IRequest, owner: str, headers: Headers, body: bytes) -> IResponse:
        """
        Send C{request} to C{owner}; once more if a kept-alive connection
        the owner had closed never carried it.
        """
        url = address_of(owner).encode("ascii") + request.uri
        response: IResponse
        try:
            response = await self.agent.request(request.method, url, headers, _Body(body) if body else None)
        except _NOT_SENT:
            response = await self.agent.request(request.method, url, headers, _Body(body) if body else None)
        return response

    async def _forward(
        self, request: IRequest, session_id: str, owner: str, body: bytes, create: bool, principal: Principal | None
    ) -> bytes | None:
        headers = self._headers(request, principal)
        asked_again = chosen_again = False
        while True:
            try:
                response = await self._send(request, owner, headers, body)
            except CancelledError:
                raise
            except _UNREACHABLE as error:
                refused = isinstance(error, ConnectionRefusedError)
                if refused:
                    await self.placement.gone(address_of(owner))
                if self.placement.passed_on(session_id):
                    # A new session this draining process passed on: nothing lived there yet.
                    self.placement.forget(session_id)
                    if refused and not chosen_again:  # it never reached a process: choose another
                        chosen_again = True
                        found = await self.placement.owner_for(session_id, create=create)
                        if found is None:
                            return None
                        owner = found
                        continue
                    raise _passed_on_unreachable() from None
                if isinstance(error, ResponseFailed) and await self._alive(owner):
                    # The owner lives but dropped this call: its session is not lost.
                    raise ServiceUnavailable(
                        f"the gateway process owning session {session_id!r} dropped the call; retry",
                        retry_after=1,
                    ) from None
                self.placement.forwards["lost"] += 1
                await self.placement.lost(session_id, owner)
                log.warn(
                    "session {id}: its owner {owner} cannot be reached ({error}); the session is lost",
                    id=session_id,
                    owner=address_of(owner),
                    error=type(error).__name__,
                )
                raise session_lost(session_id) from None
            moved = response.headers.getRawHeaders(OWNER_HEADER)
            if response.code == WrongOwner.status and moved and not asked_again:
                await treq.content(response)
                asked_again = True
                self.placement.forget(session_id)
                found = await self.placement.owner_for(session_id, create=create)
                if found is None:
                    return None
                owner = found
                continue
            break
        self.placement.reached(session_id)
        if response.code in (429, 503):
            # Refused there (full, draining; an earlier life's session): the
            # owner may not hold the session, its claim released, so the
            # next call asks the directory rather than being sent back.
            self.placement.forget(session_id)
        self.placement.forwards["answered"] += 1
        await self._answer(request, response, owner)
        return b""

    async def _answer(self, request: IRequest, response: IResponse, owner: str) -> None:
        """
        Answer C{request} with another gateway's C{response}: its status,
        relevant headers and body, streamed.
        """
        request.setResponseCode(response.code)
        for name in _RESPONSE_HEADERS:
            values = response.headers.getRawHeaders(name)
            if values:
                request.setHeader(name, values[-1])
        try:
            await _deliver(response, request.write)
        except CancelledError:
            raise
        except Exception as error:
            # The status is out already: cut the client's connection, so it
            # cannot take a truncated answer for a whole one.
            log.warn(
                "the answer from {owner} to {method} {path} was cut short ({error})",
                owner=address_of(owner),
                method=request.method,
                path=request.path,
                error=type(error).__name__,
            )
            request.loseConnection()  # type: ignore[attr-defined]

    async def _alive(self, owner: str) -> bool:
        """
        @return: Whether C{owner} answers C{GET /health} within the connect
            timeout, with 200 or with the 503 of a process that drains (its
            live sessions are still served).
        """
        try:
            response = await self.http.get(address_of(owner) + "/health", timeout=self._connect_timeout)
            await treq.content(response)
        except CancelledError:
            raise
        except Exception:
            return False
        return bool(response.code in (200, 503))

    def close(self) -> Any:
        """
        Close the kept-alive connections.
        """
        return self.pool.closeCachedConnections()
