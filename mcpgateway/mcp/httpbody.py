"""
The bounded reading of an HTTP answer's body from a remote MCP server, and
what a failed exchange was.

A body is read whole up to a limit, or as server-sent events handed on as
they complete, each bounded (L{read_body}); past the limit the connection
is dropped and the read fails with L{TooLarge}, so a server cannot make the
gateway hold an unbounded buffer.  A request or a read that failed is told
apart as cancelled (L{cancelled}) and described for the log (L{describe}).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from mcpgateway.mcp.sse import EventTooLarge, SseParser

__all__ = ["BodyReader", "TooLarge", "cancelled", "describe", "drop", "read_body"]


class TooLarge(Exception):
    """
    An answer is over C{max_response} bytes.
    """


class BodyReader(Protocol):
    """
    Reads a response body: whole (bounded), or as server-sent events handed
    to C{on_event} as they complete.  C{done} fires at its end; cancelling it
    drops the connection.

    @ivar done: Fires with the whole body (C{b""} for events), or fails with
        L{TooLarge} or the reason the connection was lost.
    """

    def __init__(self, limit: int, on_event: Callable[[str, str], None] | None) -> None:
        """
        @param limit: The largest body, or event, in bytes.
        @param on_event: Told each event's type and data; L{None} to read
            the body whole.
        """
        self._limit = limit
        self._on_event = on_event
        self._parser = SseParser(limit) if on_event is not None else None
        self._chunks: list[bytes] = []
        self._size = 0
        self.done: Deferred[bytes] = Deferred(lambda _: self.stop())

    def stop(self) -> None:
        """
        Drop the connection (the body is not read further).
        """
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        if self._parser is None:
            self._size += len(data)
            if self._size > self._limit:
                self._fail(TooLarge(f"an answer over max_response_bytes ({self._limit} bytes)"))
                return
            self._chunks.append(data)
            return
        assert self._on_event is not None
        try:
            events = self._parser.feed(data)
        except EventTooLarge as error:
            self._fail(TooLarge(f"{error} (max_response_bytes)"))
            return
        for event in events:
            if self.done.called:
                return
            self._on_event(event.type, event.data)

    def _fail(self, error: Exception) -> None:
        self.stop()
        self.done.errback(error)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)


def read_body(response: IResponse, limit: int, on_event: Callable[[str, str], None] | None = None) -> BodyReader:
    """
    Start reading C{response}'s body; one whose announced length is over
    C{limit} fails at once (its connection dropped unread).

    @param limit: The largest body, or event, in bytes.
    @param on_event: Told each server-sent event; L{None} to read the body whole.
    @return: The reader (wait for its C{done}).
    """
    reader = BodyReader(limit, on_event)
    if on_event is None and response.length is not UNKNOWN_LENGTH and response.length > limit:
        reader.done.errback(TooLarge(f"an answer of {response.length} bytes, over max_response_bytes ({limit})"))
        discard = BodyReader(0, None)
        discard.done.addErrback(lambda _: None)
        response.deliverBody(discard)
        return reader
    response.deliverBody(reader)
    return reader


def drop(response: IResponse) -> None:
    """
    Close a response's connection without reading its body.
    """
    reader = read_body(response, 0)
    reader.done.addErrback(lambda _: None)
    reader.stop()


def cancelled(error: BaseException) -> bool:
    """
    @return: Whether C{error} is (or wraps) the cancellation of the exchange.
    """
    if isinstance(error, CancelledError):
        return True
    if isinstance(error, ResponseFailed | ResponseNeverReceived):
        return any(reason.check(CancelledError) for reason in error.reasons)
    return False


def describe(error: object) -> str:
    """
    @return: What went wrong with an exchange, for a log line or an exit
        reason (the reasons a C{twisted.web} failure wraps, each named).
    """
    if isinstance(error, ResponseFailed | ResponseNeverReceived):
        reasons = [reason.value for reason in error.reasons]
        return "; ".join(describe(reason) for reason in reasons) or type(error).__name__
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
