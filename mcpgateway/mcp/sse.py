"""
Server-sent events as the WHATWG HTML standard reads them, incrementally:
lines end in CRLF, LF or CR; C{event}, C{data} and C{id} fields; an event is
dispatched at a blank line.  Each event's data is bounded, so a server
cannot make the gateway hold an unbounded buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Event", "EventTooLarge", "SseParser"]


@dataclass(frozen=True)
class Event:
    """
    One dispatched event.

    @ivar type: Its C{event} field, C{"message"} when absent.
    @ivar data: Its C{data} lines joined by newlines.
    @ivar id: The last event id seen, or C{""}.
    """

    type: str
    data: str
    id: str


class EventTooLarge(Exception):
    """
    An event (or a line) is longer than the limit.
    """


class SseParser:
    """
    Turns chunks of an C{text/event-stream} body into L{Event}s.
    """

    def __init__(self, limit: int) -> None:
        """
        @param limit: The longest event (all its data) or line, in bytes.
        """
        self._limit = limit
        #: Bytes not yet cut into lines; C{_scanned} of them hold no line end.
        self._buffer = bytearray()
        self._scanned = 0
        self._type = ""
        self._data: list[str] = []
        self._size = 0
        self._id = ""
        self._started = False

    def feed(self, chunk: bytes) -> list[Event]:
        """
        @param chunk: The next bytes of the body.
        @return: The events completed by it.
        @raise EventTooLarge: Past the limit.
        """
        # Appending to a bytearray, searching only the new bytes and cutting
        # the consumed lines off once keep a long line arriving in many
        # chunks (or many lines in one chunk) linear, not quadratic.
        self._buffer += chunk
        events: list[Event] = []
        start = 0
        while True:
            cut = _line_end(self._buffer, max(start, self._scanned))
            if cut is None:
                del self._buffer[:start]
                if len(self._buffer) > self._limit:
                    raise EventTooLarge(f"an event-stream line is over {self._limit} bytes")
                # A CR at the very end is looked at again with the next chunk.
                self._scanned = max(0, len(self._buffer) - 1)
                return events
            end, after = cut
            line = bytes(self._buffer[start:end])
            start = after
            if not self._started:
                self._started = True
                line = line.removeprefix(b"\xef\xbb\xbf")
            event = self._line(line.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> Event | None:
        if not line:
            if not self._data:
                self._type = ""
                return None
            event = Event(self._type or "message", "\n".join(self._data), self._id)
            self._type, self._data, self._size = "", [], 0
            return event
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._size += len(value) + 1
            if self._size > self._limit:
                raise EventTooLarge(f"an event is over {self._limit} bytes")
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None


def _line_end(buffer: bytearray, start: int = 0) -> tuple[int, int] | None:
    """
    @param start: How many bytes at the start are known to hold no line end.
    @return: Where the first line ends and the next begins, or L{None}.
        A CR at the very end waits for the next chunk (it may start a CRLF).
    """
    lf = buffer.find(b"\n", start)
    cr = buffer.find(b"\r", start)
    if cr == -1 or (lf != -1 and lf < cr):
        return None if lf == -1 else (lf, lf + 1)
    if cr + 1 == len(buffer):
        return None
    return (cr, cr + 2) if buffer[cr + 1 : cr + 2] == b"\n" else (cr, cr + 1)
