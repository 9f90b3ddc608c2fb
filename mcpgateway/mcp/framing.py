"""
Newline-delimited JSON framing for the MCP stdio transport.

L{twisted.protocols.basic.LineReceiver} splits on CRLF and caps lines at
16 KiB; MCP responses can be tens of megabytes, so the framing is done here:
a buffer, a search for C{\\n} that never rescans bytes already scanned, and a
maximum line length.
"""

from __future__ import annotations

__all__ = ["LineBuffer", "LineTooLong"]


class LineTooLong(Exception):
    """
    A line grew past the maximum length.

    @ivar length: How many bytes the line had reached.
    @ivar limit: The maximum.
    """

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"a line of at least {length} bytes exceeds the limit of {limit} bytes")
        self.length = length
        self.limit = limit


class LineBuffer:
    """
    Split a byte stream into lines, whatever its chunking.

    A trailing C{\\r} is dropped; empty lines are skipped.
    """

    def __init__(self, max_line: int) -> None:
        """
        @param max_line: The longest line accepted, in bytes, without the newline.
        """
        self.max_line = max_line
        self._buffer = bytearray()
        self._scanned = 0

    def feed(self, data: bytes) -> list[bytes]:
        """
        Add C{data} and return the lines it completes.

        @param data: The next chunk of the stream.
        @return: The complete lines, oldest first, without line ends.
        @raise LineTooLong: When a line exceeds C{max_line}; the buffer is
            then in an undefined state and the stream should be abandoned.
        """
        buffer = self._buffer
        buffer += data
        lines: list[bytes] = []
        start = 0
        position = self._scanned
        while True:
            end = buffer.find(b"\n", position)
            if end < 0:
                break
            if end - start > self.max_line:
                raise LineTooLong(end - start, self.max_line)
            line = bytes(buffer[start:end]).rstrip(b"\r")
            if line:
                lines.append(line)
            start = position = end + 1
        if start:
            del buffer[:start]
        self._scanned = len(buffer)
        if self._scanned > self.max_line:
            raise LineTooLong(self._scanned, self.max_line)
        return lines

    @property
    def pending(self) -> int:
        """
        @return: Bytes buffered of a line not yet complete.
        """
        return len(self._buffer)
