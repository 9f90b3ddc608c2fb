"""
A minimal HTTP/1.1 keep-alive load generator on raw sockets, and a canned
server to measure what the generator itself costs.

Nothing here knows about the gateway: a request is the bytes to send, a
response is parsed just far enough to find its end (C{Content-Length} or
chunked), its status and its body.  L{Connection} is the blocking client
(one request at a time, for latency); L{drive} runs many connections from one
thread with C{selectors}, each closed-loop (send, wait for the answer, send
the next), for throughput.  L{CannedServer} answers every request with the
same prepared bytes from a thread of the calling process, so timing the
client against it gives an upper bound of the client's own per-request cost.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "CannedServer",
    "Connection",
    "Response",
    "build_request",
    "drive",
    "parse_response",
    "until",
]

_RECV = 65536


@dataclass(frozen=True)
class Response:
    """
    One parsed HTTP response.

    @ivar status: The status code.
    @ivar head: The status line and headers, without the blank line.
    @ivar body: The body, de-chunked.
    @ivar raw: The response exactly as received.
    """

    status: int
    head: bytes
    body: bytes
    raw: bytes

    def header(self, name: bytes) -> bytes | None:
        """
        @param name: A header name, any case.
        @return: The first value of that header, or L{None}.
        """
        needle = b"\r\n" + name.lower() + b":"
        lower = self.head.lower()
        start = lower.find(needle)
        if start < 0:
            return None
        start += len(needle)
        end = lower.find(b"\r\n", start)
        return self.head[start : end if end >= 0 else len(self.head)].strip()


def build_request(
    method: str, path: str, host: str, headers: Iterable[tuple[str, str]] = (), body: bytes = b""
) -> bytes:
    """
    @param method: The HTTP method.
    @param path: The request target.
    @param host: The C{Host} header.
    @param headers: Further headers.
    @param body: The body (a C{Content-Length} is always sent when there is one).
    @return: The complete HTTP/1.1 request.
    """
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _chunked(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    """
    @param buffer: Received bytes.
    @param start: Where the chunked body starts.
    @return: The de-chunked body and the offset after it, or L{None} if incomplete.
    """
    parts: list[bytes] = []
    position = start
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(bytes(buffer[position:line_end]).split(b";", 1)[0], 16)
        position = line_end + 2
        if size == 0:
            # No trailers (the common case) is one more CRLF; else skip to the blank line.
            if buffer[position : position + 2] == b"\r\n":
                return b"".join(parts), position + 2
            end = buffer.find(b"\r\n\r\n", position)
            return None if end < 0 else (b"".join(parts), end + 4)
        if len(buffer) < position + size + 2:
            return None
        parts.append(bytes(buffer[position : position + size]))
        position += size + 2


def parse_response(buffer: bytearray) -> tuple[Response, int] | None:
    """
    Parse the first complete response in C{buffer}.

    @param buffer: Bytes received on a connection.
    @return: The response and the number of bytes it used, or L{None} if it
        is not complete yet.
    """
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end])
    status = int(head[9:12])
    start = end + 4
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        stop = lower.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        if len(buffer) < start + length:
            return None
        used = start + length
        return Response(status, head, bytes(buffer[start:used]), bytes(buffer[:used])), used
    if b"\r\ntransfer-encoding: chunked" in lower:
        chunked = _chunked(buffer, start)
        if chunked is None:
            return None
        body, used = chunked
        return Response(status, head, body, bytes(buffer[:used])), used
    # No framing: 1xx, 204 and 304 have no body (this client never reads to close).
    return Response(status, head, b"", head + b"\r\n\r\n"), start


class Connection:
    """
    One persistent HTTP/1.1 connection, used one request at a time.

    The socket stays blocking (with a timeout): L{drive} only reads it when
    the selector says it is readable, and requests are small enough that
    C{sendall} never waits.
    """

    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        """
        @param host: The server's address.
        @param port: Its port.
        @param timeout: Seconds any single send or receive may take.
        """
        self.sock = socket.create_connection((host, port), timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()

    def send(self, request: bytes) -> None:
        """
        @param request: A complete request.
        """
        self.sock.sendall(request)

    def feed(self) -> bool:
        """
        Read what is available into the buffer.

        @return: C{False} when the server closed the connection.
        """
        data = self.sock.recv(_RECV)
        if not data:
            return False
        self.buffer += data
        return True

    def take(self) -> Response | None:
        """
        @return: The next complete response from the buffer, if there is one.
        """
        parsed = parse_response(self.buffer)
        if parsed is None:
            return None
        response, used = parsed
        del self.buffer[:used]
        return response

    def receive(self) -> Response:
        """
        @return: The next response, waiting for it.
        @raise ConnectionError: If the server closes the connection first.
        """
        while (response := self.take()) is None:
            if not self.feed():
                raise ConnectionError("the server closed the connection")
        return response

    def request(self, request: bytes) -> Response:
        """
        @param request: A complete request.
        @return: Its response.
        """
        self.send(request)
        return self.receive()

    def close(self) -> None:
        """
        Close the socket.
        """
        self.sock.close()


def until(request: bytes, deadline: float) -> Iterator[bytes]:
    """
    @param request: The request to repeat.
    @param deadline: A C{time.perf_counter()} value.
    @return: C{request}, again and again until C{deadline} has passed.
    """
    while time.perf_counter() < deadline:
        yield request


Record = Callable[[int, Response, float, float], None]


def drive(
    connections: Sequence[Connection],
    feeds: Sequence[Iterator[bytes]],
    record: Record,
    idle_timeout: float = 60.0,
) -> None:
    """
    Run every connection closed-loop from this thread: send the next
    request of its feed as soon as the previous answer is in, until every
    feed is exhausted and every answer received.

    @param connections: The connections, all idle.
    @param feeds: One iterator of requests per connection.
    @param record: Called with (connection index, response, sent at, answered
        at) for every answer, times from C{time.perf_counter()}.
    @param idle_timeout: Give up when no answer arrives for this long.
    @raise TimeoutError: If that happens.
    @raise ConnectionError: If a server closes a connection.
    """
    clock = time.perf_counter
    selector = selectors.DefaultSelector()
    sent_at = [0.0] * len(connections)
    active = 0
    try:
        for index, (connection, feed) in enumerate(zip(connections, feeds, strict=True)):
            request = next(feed, None)
            if request is None:
                continue
            selector.register(connection.sock, selectors.EVENT_READ, index)
            sent_at[index] = clock()
            connection.send(request)
            active += 1
        while active:
            events = selector.select(idle_timeout)
            if not events:
                raise TimeoutError(f"no answer for {idle_timeout:g} s with {active} requests in flight")
            for key, _ in events:
                index = key.data
                connection = connections[index]
                if not connection.feed():
                    raise ConnectionError("the server closed a connection")
                response = connection.take()
                if response is None:
                    continue
                now = clock()
                record(index, response, sent_at[index], now)
                request = next(feeds[index], None)
                if request is None:
                    selector.unregister(connection.sock)
                    active -= 1
                    continue
                sent_at[index] = clock()
                connection.send(request)
    finally:
        selector.close()


class CannedServer:
    """
    An HTTP/1.1 server that answers every request with the same bytes,
    from one thread of this process, using raw sockets and C{selectors}.

    @ivar port: The port it listens on (127.0.0.1).
    @ivar answered: How many requests it answered.
    """

    def __init__(self, response: bytes) -> None:
        """
        @param response: The complete response to send (status line to body).
        """
        self._response = response
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(256)
        self.port: int = self._listener.getsockname()[1]
        self.answered = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="canned-http", daemon=True)

    def __enter__(self) -> CannedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, None)
        buffers: dict[socket.socket, bytearray] = {}
        try:
            while not self._stopping.is_set():
                for key, _ in selector.select(0.1):
                    if key.data is None:
                        client, _address = self._listener.accept()
                        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        buffers[client] = bytearray()
                        selector.register(client, selectors.EVENT_READ, client)
                        continue
                    client = key.data
                    data = client.recv(_RECV)
                    if not data:
                        selector.unregister(client)
                        client.close()
                        del buffers[client]
                        continue
                    buffer = buffers[client]
                    buffer += data
                    answers = self._complete_requests(buffer)
                    if answers:
                        client.sendall(self._response * answers)
                        self.answered += answers
        finally:
            for client in buffers:
                client.close()
            selector.close()

    @staticmethod
    def _complete_requests(buffer: bytearray) -> int:
        """
        Consume every complete request in C{buffer}.

        @return: How many there were.
        """
        count = 0
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(buffer[:end]).lower()
            at = head.find(b"\r\ncontent-length:")
            length = 0
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            if len(buffer) < end + 4 + length:
                break
            del buffer[: end + 4 + length]
            count += 1
        return count
