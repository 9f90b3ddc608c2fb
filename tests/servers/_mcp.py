"""
A tiny stdio MCP server core shared by the fixture servers in this directory.

The scripts here import it through their own directory (C{sys.path[0]}), so
it is standard library only and does not depend on C{mcpgateway}: the
gateway's tests should not check the gateway's code against itself.

L{Server} reads one JSON-RPC message per line on stdin and writes one per
line on stdout.  Requests are handled in order on the reading thread, unless
a handler hands one to L{Server.background}, which answers it from a thread
later (or never, once the client cancels it).  A server can also send its
own requests to the client (L{Server.ask_client}) and wait for the answers.

Protocol eras: a legacy-only server (the default, like the Node reference
servers) answers C{server/discover} with -32601 and ignores any C{_meta}
envelope.  A dual-era server (C{modern=True}) is locked by the first
C{initialize} or C{server/discover}, exactly like
C{mcpgateway.examples.todo_server}.

Subclasses change behaviour by overriding the C{on_*} methods and
L{Server.send_response}.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

RequestId = Union[int, str]

LEGACY_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS = ("2026-07-28",)
VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
CAPABILITIES = {"tools": {"listChanged": True}}

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
UNSUPPORTED_PROTOCOL_VERSION = -32022

_encode = json.JSONEncoder(separators=(",", ":")).encode
_stderr_lock = threading.Lock()


def log(text: str) -> None:
    """
    Write one line to stderr, as is.

    @param text: The line, without its newline.
    """
    with _stderr_lock:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


class RPCError(Exception):
    """
    Raised by a handler or tool to answer with a JSON-RPC error.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        """
        @param code: The JSON-RPC error code.
        @param message: The error message.
        @param data: Extra data, or L{None} for none.
        """
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        """
        @return: The C{error} member of the answer.
        """
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class ToolFailure(Exception):
    """
    Raised by a tool to answer with an C{isError} result carrying the message.
    """


def text_result(text: str, is_error: bool = False) -> dict[str, Any]:
    """
    @param text: The text to return.
    @param is_error: Whether the call failed.
    @return: A C{tools/call} result of one text block.
    """
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


@dataclass
class Request:
    """
    A request from the client, being answered.

    @ivar id: Its id.
    @ivar method: Its method.
    @ivar params: Its params (an empty dict when absent).
    @ivar modern: Whether it is answered in the 2026-07-28 era.
    @ivar cancelled: Set when the client cancels it: it then gets no answer.
    """

    id: RequestId
    method: str
    params: dict[str, Any]
    modern: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)


ToolResult = Union[str, dict[str, Any], None]


@dataclass
class Tool:
    """
    A tool: its description and the function that runs it.

    @ivar run: Called with the request and the arguments; returns a text, a
        full result, or L{None} to send no answer at all; may raise
        L{ToolFailure} or L{RPCError}.
    @ivar background: Whether to run it on its own thread, so that slow calls
        do not hold up the requests after them.
    """

    name: str
    description: str
    run: Callable[[Request, dict[str, Any]], ToolResult]
    properties: dict[str, dict[str, Any]] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    background: bool = False

    def describe(self) -> dict[str, Any]:
        """
        @return: The tool as C{tools/list} shows it.
        """
        return {
            "name": self.name,
            "description": self.description,
            "inputSchema": {"type": "object", "properties": self.properties, "required": list(self.required)},
        }


class _Waiter:
    """
    The answer to one request this server sent to the client.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.answer: dict[str, Any] = {}

    def wait(self, timeout: float) -> dict[str, Any] | None:
        """
        @param timeout: Seconds to wait.
        @return: The response message, or L{None} on timeout.
        """
        return self.answer if self.event.wait(timeout) else None


class Server:
    """
    The server: its tools, its era, its in-flight requests.

    @ivar era: C{"legacy"}, C{"modern"} or L{None} while unlocked.
    """

    def __init__(self, name: str, tools: list[Tool], *, modern: bool = False) -> None:
        """
        @param name: The C{serverInfo} name.
        @param tools: The tools.
        @param modern: Whether to speak the 2026-07-28 era too.
        """
        self.server_info = {"name": name, "version": "1.0.0"}
        self.tools = {tool.name: tool for tool in tools}
        self.dual_era = modern
        self.era: str | None = None
        self._write_lock = threading.Lock()
        self._in_flight: dict[RequestId, Request] = {}
        self._waiters: dict[RequestId, _Waiter] = {}
        self._methods: dict[str, Callable[[Request], dict[str, Any] | None]] = {
            "initialize": self.on_initialize,
            "server/discover": self.on_discover,
            "ping": lambda request: {},
            "tools/list": self.on_list_tools,
            "tools/call": self.on_call_tool,
        }

    # Output.

    def write(self, *messages: dict[str, Any] | bytes) -> None:
        """
        Write messages (or raw lines, given as bytes) to stdout, together.

        @param messages: JSON-RPC messages, or raw lines without newline.
        """
        data = b"".join((m if isinstance(m, bytes) else _encode(m).encode()) + b"\n" for m in messages)
        with self._write_lock:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """
        Send a notification to the client.

        @param method: Its method.
        @param params: Its params, if any.
        """
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self.write(message)

    def ask_client(self, request_id: RequestId, method: str, params: dict[str, Any] | None = None) -> _Waiter:
        """
        Send a request to the client.

        @param request_id: Its id (it may collide with the client's ids).
        @param method: Its method.
        @param params: Its params, if any.
        @return: What to wait on for the client's response message.
        """
        waiter = self._waiters[request_id] = _Waiter()
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self.write(message)
        return waiter

    def send_response(self, request: Request | None, message: dict[str, Any]) -> None:
        """
        Write a response; subclasses may change it on the way.

        @param request: What it answers; L{None} for an unreadable message.
        @param message: The response.
        """
        self.write(message)

    def respond(self, request: Request, result: dict[str, Any]) -> None:
        """
        Answer a request with a result, unless it was cancelled.

        @param request: The request.
        @param result: Its result.
        """
        if request.cancelled.is_set():
            return
        if request.modern:
            result["resultType"] = "complete"
            if request.method in ("server/discover", "tools/list"):
                # 2026-07-28 caching hints, required: the SDK's client rejects results without.
                result["cacheScope"] = "private"
                result["ttlMs"] = 0
        self.send_response(request, {"jsonrpc": "2.0", "id": request.id, "result": result})

    def respond_error(self, request: Request, error: RPCError) -> None:
        """
        Answer a request with an error, unless it was cancelled.

        @param request: The request.
        @param error: The error.
        """
        if not request.cancelled.is_set():
            self.send_response(request, {"jsonrpc": "2.0", "id": request.id, "error": error.to_json()})

    def background(self, request: Request, work: Callable[[], dict[str, Any] | None]) -> None:
        """
        Answer a request from a new thread, so that the next lines are read meanwhile.

        @param request: The request; a C{notifications/cancelled} naming it
            sets C{request.cancelled} and suppresses the answer.
        @param work: Computes the result (L{None}: no answer); may raise L{RPCError}.
        """
        self._in_flight[request.id] = request

        def run() -> None:
            try:
                result = work()
            except RPCError as e:
                self.respond_error(request, e)
            else:
                if result is not None:
                    self.respond(request, result)
            finally:
                self._in_flight.pop(request.id, None)

        threading.Thread(target=run, name=f"request-{request.id}", daemon=True).start()

    # Input.

    def run(self) -> None:
        """
        Serve stdin until its end, then call L{on_eof}.
        """
        readline = sys.stdin.buffer.readline
        while line := readline():
            self.handle_line(line)
        self.on_eof()

    def on_eof(self) -> None:
        """
        Called at the end of stdin; the process then exits 0.
        """

    def handle_line(self, line: bytes) -> None:
        """
        Handle one input line.

        @param line: One JSON-RPC message.
        """
        if not line.strip():
            return
        try:
            message = json.loads(line)
        except (ValueError, RecursionError) as e:
            self._error(None, PARSE_ERROR, f"Parse error: {e}")
            return
        if isinstance(message, list):
            log("ignoring a JSON-RPC batch: batches are not supported")
            return
        if not isinstance(message, dict):
            self._error(None, INVALID_REQUEST, "Invalid Request: a message must be a JSON object")
            return
        method = message.get("method")
        params = message.get("params")
        if params is None:
            params = {}
        if "id" not in message:
            if isinstance(method, str) and isinstance(params, dict):
                self.on_notification(method, params)
            return
        request_id = message["id"]
        if type(request_id) is not int and type(request_id) is not str:
            self._error(None, INVALID_REQUEST, "Invalid Request: the id must be a string or an integer")
            return
        if not isinstance(method, str):
            waiter = self._waiters.pop(request_id, None)
            if waiter is None:
                log(f"ignoring a response to unknown request {request_id!r}")
            else:
                waiter.answer = message
                waiter.event.set()
            return
        if not isinstance(params, dict):
            self._error(request_id, INVALID_PARAMS, "params must be an object")
            return
        request = Request(request_id, method, params)
        try:
            result = self.dispatch(request)
        except RPCError as e:
            self.respond_error(request, e)
        else:
            if result is not None:
                self.respond(request, result)

    def _error(self, request_id: RequestId | None, code: int, message: str) -> None:
        """
        Answer an unusable message.

        @param request_id: Its id, if known.
        @param code: The JSON-RPC error code.
        @param message: The error message.
        """
        self.send_response(None, {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})

    def on_notification(self, method: str, params: dict[str, Any]) -> None:
        """
        Handle a notification: C{notifications/cancelled} cancels an in-flight request.

        @param method: Its method.
        @param params: Its params.
        """
        if method == "notifications/cancelled":
            request_id = params.get("requestId")
            request = self._in_flight.get(request_id) if isinstance(request_id, (int, str)) else None
            if request is None:
                log(f"ignoring the cancellation of request {request_id!r}: not in flight")
            else:
                request.cancelled.set()
                log(f"cancelled {request_id}")

    def dispatch(self, request: Request) -> dict[str, Any] | None:
        """
        Route a request, in its era.

        @param request: The request; its C{modern} flag is set here.
        @return: Its result, or L{None} when it is answered later or never.
        @raise RPCError: For an error answer.
        """
        method, params = request.method, request.params
        if self.dual_era and method != "initialize":
            request.modern = self._modern(method, params)
        elif method == "server/discover":
            raise RPCError(METHOD_NOT_FOUND, "Method not found", method)
        handler = self._methods.get(method)
        if handler is None:
            raise RPCError(METHOD_NOT_FOUND, "Method not found", method)
        return handler(request)

    def _modern(self, method: str, params: dict[str, Any]) -> bool:
        """
        Decide a request's era, enforcing the lock.

        @param method: The request's method (not C{initialize}).
        @param params: Its params.
        @return: Whether to answer it in the modern era.
        @raise RPCError: When it does not fit the locked era.
        """
        meta = params.get("_meta")
        enveloped = isinstance(meta, dict) and VERSION_KEY in meta
        if self.era == "legacy":
            if enveloped:
                raise RPCError(INVALID_REQUEST, "this server speaks the initialize handshake era")
            if method == "server/discover":
                raise RPCError(METHOD_NOT_FOUND, "Method not found", method)
            return False
        if self.era == "modern" or method == "server/discover" or enveloped:
            if not isinstance(meta, dict) or VERSION_KEY not in meta or CAPABILITIES_KEY not in meta:
                raise RPCError(INVALID_PARAMS, f"params._meta must carry {VERSION_KEY!r} and {CAPABILITIES_KEY!r}")
            version = meta[VERSION_KEY]
            if not isinstance(version, str):
                raise RPCError(INVALID_PARAMS, "the protocol-version envelope value must be a string")
            if version not in MODERN_VERSIONS:
                raise RPCError(
                    UNSUPPORTED_PROTOCOL_VERSION,
                    "Unsupported protocol version",
                    {"supported": list(MODERN_VERSIONS), "requested": version},
                )
            return True
        return False

    # Methods.

    def on_initialize(self, request: Request) -> dict[str, Any] | None:
        """
        @param request: An C{initialize} request.
        @return: The InitializeResult; the era is locked to legacy.
        """
        requested = request.params.get("protocolVersion")
        if self.era == "modern":
            data: dict[str, Any] = {"supported": list(MODERN_VERSIONS)}
            if isinstance(requested, str):
                data["requested"] = requested
            raise RPCError(UNSUPPORTED_PROTOCOL_VERSION, "this server speaks 2026-07-28 since server/discover", data)
        if not isinstance(requested, str):
            raise RPCError(INVALID_PARAMS, "initialize needs params.protocolVersion, a string")
        self.era = "legacy"
        return {
            "protocolVersion": requested if requested in LEGACY_VERSIONS else LEGACY_VERSIONS[-1],
            "capabilities": CAPABILITIES,
            "serverInfo": self.server_info,
        }

    def on_discover(self, request: Request) -> dict[str, Any] | None:
        """
        @param request: A C{server/discover} request, its envelope checked.
        @return: The DiscoverResult; the era is locked to modern.
        """
        self.era = "modern"
        return {
            "supportedVersions": list(MODERN_VERSIONS),
            "capabilities": CAPABILITIES,
            "_meta": {SERVER_INFO_KEY: self.server_info},
        }

    def on_list_tools(self, request: Request) -> dict[str, Any] | None:
        """
        @param request: A C{tools/list} request.
        @return: Every tool, on one page.
        """
        if request.params.get("cursor") is not None:
            raise RPCError(INVALID_PARAMS, "Invalid cursor")
        return {"tools": [tool.describe() for tool in self.tools.values()]}

    def on_call_tool(self, request: Request) -> dict[str, Any] | None:
        """
        @param request: A C{tools/call} request.
        @return: The CallToolResult, or L{None} when the tool runs in the background.
        """
        name = request.params.get("name")
        arguments = request.params.get("arguments")
        if not isinstance(name, str):
            raise RPCError(INVALID_PARAMS, "tools/call needs params.name, a string")
        if arguments is None:
            arguments = {}
        elif not isinstance(arguments, dict):
            raise RPCError(INVALID_PARAMS, "tools/call params.arguments must be an object")
        tool = self.tools.get(name)
        if tool is None:
            return text_result(f"Unknown tool: {name}", True)
        if tool.background:
            self.background(request, lambda: self._run_tool(tool, request, arguments))
            return None
        return self._run_tool(tool, request, arguments)

    def _run_tool(self, tool: Tool, request: Request, arguments: dict[str, Any]) -> dict[str, Any] | None:
        """
        @param tool: The tool.
        @param request: Its C{tools/call} request.
        @param arguments: Its arguments.
        @return: The CallToolResult, or L{None} for no answer.
        @raise RPCError: When the tool asks for an error answer.
        """
        try:
            result = tool.run(request, arguments)
        except ToolFailure as e:
            return text_result(str(e), True)
        except RPCError:
            raise
        except Exception as e:
            log(f"tool {tool.name} raised:\n{traceback.format_exc()}")
            return text_result(f"tool {tool.name} failed: {e!r}", True)
        return text_result(result) if isinstance(result, str) else result


def main(server: Server) -> None:
    """
    Run C{server} on stdin and stdout and exit 0 at the end of stdin.

    @param server: The server.
    """
    try:
        server.run()
    except (BrokenPipeError, KeyboardInterrupt):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
