"""
C{python -m mcpgateway.bridge URL [--token T | --user U --password P]}: a
stdio MCP server that is a remote gateway's C{/mcp} (or
C{/services/<name>/mcp}), for clients that can only launch stdio servers.

It reads one JSON-RPC message per line on stdin, POSTs each to C{URL} (with
C{Mcp-Session-Id} and C{MCP-Protocol-Version} once the legacy session is
open, or the 2026-07-28 C{MCP-Protocol-Version}/C{Mcp-Method}/C{Mcp-Name}
headers for a request carrying the modern envelope), and writes what comes
back, JSON or SSE, one message per line on stdout.  After
C{notifications/initialized} it keeps a GET stream open for the gateway's own
messages (C{list_changed}, a child's sampling request...).  A 2026-07-28
C{notifications/cancelled} closes the cancelled request's connection (that is
the cancellation on that wire); a legacy one is posted.  At the end of stdin
the legacy session is deleted.

Credentials may also come from C{MCPGATEWAY_TOKEN}, or C{MCPGATEWAY_USER} and
C{MCPGATEWAY_PASSWORD}, so that they do not show in the process list.

This is a separate client program: it uses blocking I/O, one thread per
request in flight.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import urlsplit

__all__ = ["Bridge", "main"]

VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
ACCEPT = "application/json, text/event-stream"
RECONNECT_SECONDS = 1.0


def log(text: str) -> None:
    """
    One line on stderr (the client's log).
    """
    sys.stderr.write(f"mcpgateway.bridge: {text}\n")
    sys.stderr.flush()


def _header_value(value: str) -> str:
    """
    @return: C{value}, or its C{=?base64?...?=} form when it is not plain printable ASCII.
    """
    if value.isascii() and value.isprintable() and value == value.strip():
        return value
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


def _envelope_version(message: dict[str, Any]) -> str | None:
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    version = meta.get(VERSION_KEY) if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None


def sse_messages(response: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    """
    @return: The JSON messages of an SSE response, as they arrive.
    """
    data: list[bytes] = []
    while True:
        line = response.readline()
        if not line:
            return
        line = line.rstrip(b"\r\n")
        if not line:
            if data:
                try:
                    message = json.loads(b"\n".join(data))
                except ValueError:
                    log("skipped an SSE event that is not JSON")
                else:
                    if isinstance(message, dict):
                        yield message
                data = []
            continue
        if line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if field == b"data":
            data.append(value[1:] if value.startswith(b" ") else value)


class Bridge:
    """
    One stdio client's connection to the gateway.

    @ivar session_id: The legacy session, once open.
    @ivar version: The negotiated legacy protocol version.
    """

    def __init__(self, url: str, authorization: str | None, context: ssl.SSLContext | None, out: IO[bytes]) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.secure = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.secure else 80)
        self.path = (parts.path or "/mcp") + (f"?{parts.query}" if parts.query else "")
        self.authorization = authorization
        self.context = context
        self.out = out
        self.session_id: str | None = None
        self.version: str | None = None
        self._initialize: dict[str, Any] | None = None
        self._write_lock = threading.Lock()
        self._inflight: dict[tuple[str, Any], http.client.HTTPConnection] = {}
        self._cancelled: set[tuple[str, Any]] = set()
        self._inflight_lock = threading.Lock()
        self._closing = threading.Event()
        self._stream: threading.Thread | None = None

    # -- output ----------------------------------------------------------------

    def emit(self, message: dict[str, Any]) -> None:
        """
        Write one message to stdout.
        """
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with self._write_lock:
            try:
                self.out.write(line)
                self.out.flush()
            except (BrokenPipeError, ValueError):
                self._closing.set()

    def _fail(self, message: dict[str, Any], code: int, text: str, data: Any = None) -> None:
        if "id" in message and "method" in message:
            error: dict[str, Any] = {"code": code, "message": text}
            if data is not None:
                error["data"] = data
            self.emit({"jsonrpc": "2.0", "id": message["id"], "error": error})

    # -- HTTP --------------------------------------------------------------------

    def _connection(self, timeout: float | None = None) -> http.client.HTTPConnection:
        if self.secure:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _headers(self, accept: str = ACCEPT) -> dict[str, str]:
        headers = {"Accept": accept}
        if self.authorization:
            headers["Authorization"] = self.authorization
        return headers

    def _message_headers(self, message: dict[str, Any]) -> dict[str, str]:
        headers = self._headers()
        headers["Content-Type"] = "application/json"
        modern = _envelope_version(message)
        method = message.get("method")
        if modern is not None and isinstance(method, str):
            headers["MCP-Protocol-Version"] = modern
            headers["Mcp-Method"] = method
            params = message.get("params")
            name = params.get(NAME_BEARING.get(method, "")) if isinstance(params, dict) else None
            if isinstance(name, str):
                headers["Mcp-Name"] = _header_value(name)
            return headers
        if method != "initialize":
            if self.session_id:
                headers["Mcp-Session-Id"] = self.session_id
            if self.version:
                headers["MCP-Protocol-Version"] = self.version
        return headers

    def post(self, message: dict[str, Any], *, retry: bool = True) -> None:
        """
        POST one message and relay what comes back.
        """
        key = ("id", message.get("id")) if "id" in message and "method" in message else None
        connection = self._connection()
        if key is not None:
            with self._inflight_lock:
                self._inflight[key] = connection
        try:
            body = json.dumps(message, separators=(",", ":")).encode()
            connection.request("POST", self.path, body, self._message_headers(message))
            response = connection.getresponse()
            if (
                response.status == 404
                and retry
                and self.session_id
                and message.get("method") != "initialize"
                and _envelope_version(message) is None
                and self._reinitialize()
            ):
                response.read()
                self.post(message, retry=False)
                return
            self._relay(message, response)
        except (OSError, http.client.HTTPException) as error:
            if key is not None and key in self._cancelled:
                return
            log(f"POST failed: {error}")
            self._fail(message, -32603, f"the gateway could not be reached: {error}")
        finally:
            if key is not None:
                with self._inflight_lock:
                    self._inflight.pop(key, None)
                    self._cancelled.discard(key)
            connection.close()

    def _relay(self, message: dict[str, Any], response: http.client.HTTPResponse) -> None:
        kind = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if message.get("method") == "initialize" and response.status == 200:
            self.session_id = response.getheader("Mcp-Session-Id") or self.session_id
        if kind == "text/event-stream":
            for answer in sse_messages(response):
                self._emit_answer(message, answer)
            return
        raw = response.read()
        if response.status == 202 or not raw.strip():
            if response.status >= 400:
                self._fail(message, -32603, f"the gateway answered HTTP {response.status}")
            return
        body: Any
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict) and ("result" in body or "error" in body) and "jsonrpc" in body:
            self._emit_answer(message, body)
        elif response.status >= 400:
            detail = body.get("error") if isinstance(body, dict) else raw[:200].decode("utf-8", "replace")
            self._fail(message, -32603, f"the gateway answered HTTP {response.status}: {detail}", body)

    def _emit_answer(self, message: dict[str, Any], answer: dict[str, Any]) -> None:
        if "method" not in answer and answer.get("id") is None and "id" in message:
            answer = {**answer, "id": message["id"]}
        if message.get("method") == "initialize" and isinstance(answer.get("result"), dict):
            version = answer["result"].get("protocolVersion")
            self.version = version if isinstance(version, str) else self.version
        self.emit(answer)

    def _reinitialize(self) -> bool:
        """
        The legacy session ended (expired): open a new one, as the client did.
        """
        if self._initialize is None:
            return False
        log("the session ended; opening a new one")
        self.session_id = None
        connection = self._connection()
        try:
            connection.request(
                "POST", self.path, json.dumps(self._initialize).encode(), self._message_headers(self._initialize)
            )
            response = connection.getresponse()
            response.read()
            self.session_id = response.getheader("Mcp-Session-Id")
            if response.status != 200 or not self.session_id:
                return False
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, retry=False)
        return True

    def cancel(self, message: dict[str, Any]) -> bool:
        """
        A 2026-07-28 cancellation: close the request's connection.

        @return: Whether a request in flight was cancelled so.
        """
        params = message.get("params")
        key = ("id", params.get("requestId") if isinstance(params, dict) else None)
        with self._inflight_lock:
            connection = self._inflight.get(key)
            if connection is None:
                return False
            self._cancelled.add(key)
        sock = connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return True

    def delete(self) -> None:
        """
        End the legacy session, if one is open.
        """
        if not self.session_id:
            return
        connection = self._connection(timeout=5)
        headers = self._headers()
        headers["Mcp-Session-Id"] = self.session_id
        if self.version:
            headers["MCP-Protocol-Version"] = self.version
        try:
            connection.request("DELETE", self.path, headers=headers)
            connection.getresponse().read()
        except (OSError, http.client.HTTPException) as error:
            log(f"DELETE failed: {error}")
        finally:
            connection.close()

    # -- the GET stream ----------------------------------------------------------

    def _listen(self) -> None:
        while not self._closing.is_set() and self.session_id:
            connection = self._connection()
            headers = self._headers("text/event-stream")
            headers["Mcp-Session-Id"] = self.session_id
            if self.version:
                headers["MCP-Protocol-Version"] = self.version
            try:
                connection.request("GET", self.path, headers=headers)
                response = connection.getresponse()
                if response.status == 200:
                    for message in sse_messages(response):
                        self.emit(message)
                elif response.status in (404, 405):
                    return
            except (OSError, http.client.HTTPException) as error:
                log(f"GET stream: {error}")
            finally:
                connection.close()
            self._closing.wait(RECONNECT_SECONDS)

    # -- the loop --------------------------------------------------------------------

    def handle(self, message: dict[str, Any]) -> None:
        """
        One message from the client.
        """
        method = message.get("method")
        if method == "notifications/cancelled" and self.cancel(message):
            return
        if method == "initialize":
            self._initialize = message
            self.post(message)  # in order: the session id is needed next
            return
        if "id" in message and isinstance(method, str):
            threading.Thread(target=self.post, args=(message,), daemon=True, name=f"post-{message['id']}").start()
            return
        self.post(message)
        if method == "notifications/initialized" and self._stream is None and self.session_id:
            self._stream = threading.Thread(target=self._listen, daemon=True, name="get-stream")
            self._stream.start()

    def run(self, stdin: IO[bytes]) -> None:
        """
        Relay until the end of C{stdin}, then end the session.
        """
        for raw in stdin:
            line = raw.strip()
            if not line:
                continue
            try:
                message = json.loads(line)
            except ValueError:
                self.emit({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}})
                continue
            if isinstance(message, dict):
                self.handle(message)
            if self._closing.is_set():
                break
        self._closing.set()
        self.delete()


def _authorization(args: argparse.Namespace) -> str | None:
    token = args.token or os.environ.get("MCPGATEWAY_TOKEN")
    user = args.user or os.environ.get("MCPGATEWAY_USER")
    password = args.password if args.password is not None else os.environ.get("MCPGATEWAY_PASSWORD")
    if token:
        return f"Bearer {token}"
    if user is not None and password is not None:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return None


def main(argv: list[str] | None = None) -> None:
    """
    Run the bridge on stdin and stdout.

    @param argv: Arguments (without the program name); C{sys.argv[1:]} if L{None}.
    """
    parser = argparse.ArgumentParser(
        prog="python -m mcpgateway.bridge", description="A stdio MCP server relaying to a gateway's /mcp endpoint."
    )
    parser.add_argument("url", help="the endpoint, e.g. https://gateway:8080/mcp")
    parser.add_argument("--token", help="bearer token (or MCPGATEWAY_TOKEN)")
    parser.add_argument("--user", help="basic-auth user (or MCPGATEWAY_USER)")
    parser.add_argument("--password", help="basic-auth password (or MCPGATEWAY_PASSWORD)")
    parser.add_argument("--cafile", help="CA bundle to verify the gateway's certificate")
    parser.add_argument("--insecure", action="store_true", help="do not verify the gateway's certificate")
    args = parser.parse_args(argv)
    context = None
    if urlsplit(args.url).scheme == "https":
        context = ssl.create_default_context(cafile=args.cafile)
        if args.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    try:
        bridge = Bridge(args.url, _authorization(args), context, sys.stdout.buffer)
    except ValueError as error:
        parser.error(str(error))
    try:
        bridge.run(sys.stdin.buffer)
    except KeyboardInterrupt:
        bridge.delete()


if __name__ == "__main__":
    main()
