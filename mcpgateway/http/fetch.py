"""
A bounded HTTP GET for what the gateway itself must read (an issuer's JWKS,
L{mcpgateway.policy.jwks}): treq on the reactor, never blocking it.

The answer must be a 200 (redirects are not followed: the configured URL is
the one trusted), its body at most C{max_bytes} (a larger declared length
is refused before reading, a longer body is cut off and its connection
dropped), and the whole exchange must end within C{timeout} seconds.  HTTPS
is verified against the system's trust store (OpenSSL's; C{SSL_CERT_FILE}
names another bundle).  No connection is kept open between fetches.
"""

from __future__ import annotations

from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

__all__ = ["FetchError", "fetch"]


class FetchError(Exception):
    """
    The answer is not a usable one (status, size).
    """


class _Body(Protocol):
    """
    Collects a response body up to a limit; past it, drops the connection.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred(lambda _: self._stop())

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self._stop()
            self.done.errback(FetchError(f"the body is over {self.limit} bytes"))
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


async def _get(client: Any, url: str, max_bytes: int) -> bytes:
    response: IResponse = (
        await client.get(url, allow_redirects=False, unbuffered=True, headers={b"Accept": [b"application/json"]})
    ).original
    if response.length is not UNKNOWN_LENGTH and response.length > max_bytes:
        discard = _Body(0)  # drops the connection at the first byte
        discard.done.addErrback(lambda _: None)
        response.deliverBody(discard)
        raise FetchError(f"the body would be {response.length} bytes, over {max_bytes}")
    body = _Body(max_bytes)
    response.deliverBody(body)
    data = await body.done
    if response.code != 200:
        raise FetchError(f"HTTP {response.code} {response.phrase.decode('latin-1', 'replace')[:80]}")
    return data


def fetch(url: str, timeout: float, max_bytes: int, reactor: Any = None) -> Deferred[bytes]:
    """
    GET C{url}.

    @param url: An C{http://} or C{https://} URL.
    @param timeout: Seconds for all of it: connecting, the answer, the body.
    @param max_bytes: The largest body accepted.
    @param reactor: The reactor (the global one if L{None}).
    @return: Fires with the body of a 200 answer; fails with L{FetchError}
        (also for the timeout) or a connection error.
    """
    if reactor is None:
        from twisted.internet import reactor
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = HTTPClient(Agent(reactor, connectTimeout=timeout, pool=pool))
    clock: IReactorTime = reactor
    work = Deferred.fromCoroutine(_get(client, url, max_bytes))
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        work.cancel()  # the connection is dropped, whatever it was doing

    timer = clock.callLater(timeout, expire)

    def done(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        if expired and isinstance(result, Failure):
            return Failure(FetchError(f"no complete answer within {timeout:g} s"))
        return result

    return work.addBoth(done)
