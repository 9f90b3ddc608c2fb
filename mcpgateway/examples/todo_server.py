"""
A stateful to-do list MCP server over stdio, standard library only.

Run it as C{python -m mcpgateway.examples.todo_server} or as a script.  It
reads one JSON-RPC message per line on stdin, answers one per line on stdout,
strictly in order, and exits 0 at end of input.  The list lives in the
process, so it lasts exactly as long as the process.

Both protocol eras are spoken, and the first C{initialize} or
C{server/discover} locks the process into one of them:

  - legacy (2024-11-05 to 2025-11-25): the C{initialize} handshake; a later
    request carrying the 2026-07-28 C{_meta} envelope is refused with -32600.
  - modern (2026-07-28): C{server/discover}, then every request carries
    C{params._meta} with the protocol version and client capabilities and
    every result carries C{"resultType": "complete"} (and those of
    C{server/discover} and C{tools/list} the caching hints C{cacheScope}
    and C{ttlMs}); a later C{initialize} is refused with -32022, a request
    without the envelope with -32602.

Before either, requests are answered in the legacy style, except that a
request carrying the envelope is checked and answered in the modern one.

Tools: C{add_todo}, C{list_todos}, C{complete_todo}, C{delete_todo}.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import IO, Any

__all__ = ["RPCError", "TodoServer", "main"]

SERVER_INFO = {"name": "mcpgateway-todo", "version": "1.0.0"}
CAPABILITIES = {"tools": {"listChanged": True}}
LEGACY_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS = ("2026-07-28",)
VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
UNSUPPORTED_PROTOCOL_VERSION = -32022

LEGACY = "legacy"
MODERN = "modern"
# 2026-07-28 results of these methods must carry caching hints (SEP-2549);
# the SDK's client rejects them without.
CACHEABLE = frozenset({"server/discover", "tools/list"})

_TODO_ID = {"type": "integer", "minimum": 1, "description": "The number of the todo, as shown by list_todos."}
_TODO = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "description": "The todo's number."},
        "text": {"type": "string", "description": "What is to be done."},
        "done": {"type": "boolean", "description": "Whether it is done."},
    },
    "required": ["id", "text", "done"],
}
TOOLS: list[dict[str, Any]] = [
    {
        "name": "add_todo",
        "title": "Add a todo",
        "description": "Add a new, not yet done item to the to-do list and return its number.",
        "inputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string", "description": "What is to be done, e.g. 'buy milk'."}},
            "required": ["text"],
        },
    },
    {
        "name": "list_todos",
        "title": "List todos",
        "description": "List every item on the to-do list with its number and whether it is done.",
        "inputSchema": {"type": "object", "properties": {}, "required": []},
        "outputSchema": {
            "type": "object",
            "properties": {"todos": {"type": "array", "items": _TODO, "description": "The todos, oldest first."}},
            "required": ["todos"],
        },
        "annotations": {"readOnlyHint": True},
    },
    {
        "name": "complete_todo",
        "title": "Complete a todo",
        "description": "Mark an item of the to-do list as done, by its number.",
        "inputSchema": {"type": "object", "properties": {"id": _TODO_ID}, "required": ["id"]},
        "annotations": {"idempotentHint": True},
    },
    {
        "name": "delete_todo",
        "title": "Delete a todo",
        "description": "Remove an item from the to-do list for good, by its number.",
        "inputSchema": {"type": "object", "properties": {"id": _TODO_ID}, "required": ["id"]},
        "annotations": {"destructiveHint": True},
    },
]

_encode = json.JSONEncoder(separators=(",", ":")).encode


class RPCError(Exception):
    """
    A JSON-RPC error answer.

    @ivar code: The JSON-RPC error code.
    @ivar message: The human-readable message.
    @ivar data: Extra data, or L{None} for none.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        """
        @param code: The JSON-RPC error code.
        @param message: The human-readable message.
        @param data: Extra data, or L{None} for none.
        """
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class ToolFailure(Exception):
    """
    A tool call that cannot be done; it is answered as an C{isError} result.
    """


def _text(text: str, is_error: bool = False) -> dict[str, Any]:
    """
    @param text: The text to return.
    @param is_error: Whether the call failed.
    @return: A C{tools/call} result of one text block.
    """
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


def _has_envelope(params: dict[str, Any]) -> bool:
    """
    @param params: A request's params.
    @return: Whether they claim the 2026-07-28 era: C{_meta} names a protocol version.
    """
    meta = params.get("_meta")
    return isinstance(meta, dict) and VERSION_KEY in meta


def _check_envelope(params: dict[str, Any]) -> None:
    """
    Check the 2026-07-28 per-request envelope.

    @param params: A request's params.
    @raise RPCError: -32602 if the envelope is missing or malformed, -32022
        if it names a version this server does not speak.
    """
    meta = params.get("_meta")
    if not isinstance(meta, dict) or VERSION_KEY not in meta or CAPABILITIES_KEY not in meta:
        raise RPCError(
            INVALID_PARAMS,
            f"params._meta must be an object carrying the {VERSION_KEY!r} and {CAPABILITIES_KEY!r} envelope keys",
        )
    version = meta[VERSION_KEY]
    if not isinstance(version, str):
        raise RPCError(INVALID_PARAMS, "the protocol-version envelope value must be a string")
    if version not in MODERN_VERSIONS:
        raise RPCError(
            UNSUPPORTED_PROTOCOL_VERSION,
            "Unsupported protocol version",
            {"supported": list(MODERN_VERSIONS), "requested": version},
        )


def _todo_id(arguments: dict[str, Any]) -> int:
    """
    @param arguments: A call's arguments.
    @return: Their C{id}, an integer (an integral float or a digit string is accepted too).
    @raise ToolFailure: If there is no usable C{id}.
    """
    value = arguments.get("id")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ToolFailure("Argument 'id' must be an integer, the todo's number as shown by list_todos.")
    return value


class TodoServer:
    """
    The to-do list and the protocol around it, one line in, at most one line out.

    @ivar era: L{LEGACY} or L{MODERN} once locked, else L{None}.
    @ivar todos: The todos by number, oldest first: C{{id: {"id", "text", "done"}}}.
    """

    def __init__(self) -> None:
        self.era: str | None = None
        self.todos: dict[int, dict[str, Any]] = {}
        self._next_id = 1
        self._methods: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "tools/call": self._call_tool,
            "tools/list": self._list_tools,
            "ping": self._ping,
            "initialize": self._initialize,
            "server/discover": self._discover,
        }
        self._tools: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "add_todo": self._add_todo,
            "list_todos": self._list_todos,
            "complete_todo": self._complete_todo,
            "delete_todo": self._delete_todo,
        }

    def handle_line(self, line: bytes) -> bytes | None:
        """
        Handle one input line.

        @param line: One JSON-RPC message, with or without its line end.
        @return: The answer line, newline included, or L{None} when there is none.
        """
        try:
            message = json.loads(line)
        except (ValueError, RecursionError) as e:
            if not line.strip():
                return None
            return _error_line(None, PARSE_ERROR, f"Parse error: {e}")
        if type(message) is not dict:
            if type(message) is list:
                _log("ignoring a JSON-RPC batch: batches are not supported")
                return None
            return _error_line(None, INVALID_REQUEST, "Invalid Request: a message must be a JSON object")
        method = message.get("method")
        request_id = message.get("id")
        is_notification = "id" not in message
        if not is_notification and (type(request_id) is not int and type(request_id) is not str):
            return _error_line(None, INVALID_REQUEST, "Invalid Request: the id must be a string or an integer")
        if type(method) is not str:
            if is_notification or "result" in message or "error" in message:
                return None  # a response; this server never asks anything
            return _error_line(request_id, INVALID_REQUEST, "Invalid Request: the method must be a string")
        if is_notification:
            return None  # notifications/initialized, notifications/cancelled, ...: nothing to do
        try:
            result = self.request(method, message.get("params"))
        except RPCError as e:
            return _error_line(request_id, e.code, e.message, e.data)
        except Exception:
            _log(f"internal error answering {method}:\n{traceback.format_exc()}")
            return _error_line(request_id, INTERNAL_ERROR, "Internal error")
        return (_encode({"jsonrpc": "2.0", "id": request_id, "result": result}) + "\n").encode()

    def request(self, method: str, params: Any) -> dict[str, Any]:
        """
        Answer one request, in its era.

        @param method: The request's method.
        @param params: Its params, as sent (L{None} when absent).
        @return: Its result.
        @raise RPCError: For an error answer.
        """
        if params is None:
            params = {}
        elif type(params) is not dict:
            raise RPCError(INVALID_PARAMS, "params must be an object")
        handler = self._methods.get(method)
        modern = False if method == "initialize" else self._modern(method, params)
        if handler is None:
            raise RPCError(METHOD_NOT_FOUND, "Method not found", method)
        result = handler(params)
        if modern:
            result["resultType"] = "complete"
            if method in CACHEABLE:
                result["cacheScope"] = "private"
                result["ttlMs"] = 0
        return result

    def _modern(self, method: str, params: dict[str, Any]) -> bool:
        """
        Decide a request's era, enforcing the lock.

        @param method: The request's method (not C{initialize}).
        @param params: Its params.
        @return: Whether to answer it in the modern era.
        @raise RPCError: When the request does not fit the locked era.
        """
        era = self.era
        if era is LEGACY:
            if _has_envelope(params):
                raise RPCError(
                    INVALID_REQUEST,
                    "this server speaks the initialize handshake era; "
                    "requests carrying the 2026-07-28 envelope are not accepted",
                )
            if method == "server/discover":
                raise RPCError(METHOD_NOT_FOUND, "Method not found", method)
            return False
        if era is MODERN or method == "server/discover" or _has_envelope(params):
            _check_envelope(params)
            return True
        return False

    def _initialize(self, params: dict[str, Any]) -> dict[str, Any]:
        """
        Answer C{initialize} and lock the legacy era.

        @param params: {protocolVersion, capabilities, clientInfo}.
        @return: The InitializeResult.
        """
        requested = params.get("protocolVersion")
        if self.era is MODERN:
            data: dict[str, Any] = {"supported": list(MODERN_VERSIONS)}
            if isinstance(requested, str):
                data["requested"] = requested
            raise RPCError(
                UNSUPPORTED_PROTOCOL_VERSION,
                "this server speaks the 2026-07-28 protocol since server/discover; initialize is not accepted",
                data,
            )
        if not isinstance(requested, str):
            raise RPCError(INVALID_PARAMS, "initialize needs params.protocolVersion, a string")
        self.era = LEGACY
        return {
            "protocolVersion": requested if requested in LEGACY_VERSIONS else LEGACY_VERSIONS[-1],
            "capabilities": CAPABILITIES,
            "serverInfo": SERVER_INFO,
        }

    def _discover(self, params: dict[str, Any]) -> dict[str, Any]:
        """
        Answer C{server/discover} (its envelope already checked) and lock the modern era.

        @param params: The request's params.
        @return: The DiscoverResult.
        """
        self.era = MODERN
        return {
            "supportedVersions": list(MODERN_VERSIONS),
            "capabilities": CAPABILITIES,
            "_meta": {SERVER_INFO_KEY: SERVER_INFO},
        }

    def _ping(self, params: dict[str, Any]) -> dict[str, Any]:
        """
        @param params: Ignored.
        @return: An empty result.
        """
        return {}

    def _list_tools(self, params: dict[str, Any]) -> dict[str, Any]:
        """
        @param params: May carry a C{cursor}; there is only one page, so none is valid.
        @return: The ListToolsResult.
        """
        if params.get("cursor") is not None:
            raise RPCError(INVALID_PARAMS, "Invalid cursor: the tool list has a single page")
        return {"tools": TOOLS}

    def _call_tool(self, params: dict[str, Any]) -> dict[str, Any]:
        """
        @param params: {name, arguments}.
        @return: The CallToolResult; a failing call is an C{isError} result.
        """
        name = params.get("name")
        arguments = params.get("arguments")
        if type(name) is not str:
            raise RPCError(INVALID_PARAMS, "tools/call needs params.name, a string")
        if arguments is None:
            arguments = {}
        elif type(arguments) is not dict:
            raise RPCError(INVALID_PARAMS, "tools/call params.arguments must be an object")
        tool = self._tools.get(name)
        if tool is None:
            return _text(f"Unknown tool: {name}. Known tools: {', '.join(self._tools)}.", True)
        try:
            return tool(arguments)
        except ToolFailure as e:
            return _text(str(e), True)

    def _add_todo(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """
        @param arguments: {text}.
        @return: "Added todo #N: text".
        """
        text = arguments.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ToolFailure("Argument 'text' must be a non-empty string: what is to be done.")
        todo_id = self._next_id
        self._next_id += 1
        self.todos[todo_id] = {"id": todo_id, "text": text, "done": False}
        return _text(f"Added todo #{todo_id}: {text}")

    def _list_todos(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """
        @param arguments: Ignored.
        @return: One line per todo, "#1 [ ] buy milk", or "No todos."; and
            C{structuredContent} {"todos": [{"id", "text", "done"}]}.
        """
        todos = [dict(todo) for todo in self.todos.values()]
        if todos:
            text = "\n".join(f"#{t['id']} [{'x' if t['done'] else ' '}] {t['text']}" for t in todos)
        else:
            text = "No todos."
        result = _text(text)
        result["structuredContent"] = {"todos": todos}
        return result

    def _find(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """
        @param arguments: {id}.
        @return: The todo with that id.
        @raise ToolFailure: If there is none.
        """
        todo_id = _todo_id(arguments)
        todo = self.todos.get(todo_id)
        if todo is None:
            raise ToolFailure(f"No todo #{todo_id}; use list_todos to see the todos and their numbers.")
        return todo

    def _complete_todo(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """
        @param arguments: {id}.
        @return: "Completed todo #N: text", or "Todo #N was already done: text".
        """
        todo = self._find(arguments)
        if todo["done"]:
            return _text(f"Todo #{todo['id']} was already done: {todo['text']}")
        todo["done"] = True
        return _text(f"Completed todo #{todo['id']}: {todo['text']}")

    def _delete_todo(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """
        @param arguments: {id}.
        @return: "Deleted todo #N: text".
        """
        todo = self._find(arguments)
        del self.todos[todo["id"]]
        return _text(f"Deleted todo #{todo['id']}: {todo['text']}")

    def serve(self, stdin: IO[bytes], stdout: IO[bytes]) -> None:
        """
        Answer lines from C{stdin} on C{stdout}, in order, until end of input.

        @param stdin: Where requests come from.
        @param stdout: Where answers go; flushed after every line.
        """
        readline, write, flush, handle = stdin.readline, stdout.write, stdout.flush, self.handle_line
        while line := readline():
            answer = handle(line)
            if answer is not None:
                write(answer)
                flush()


def _error_line(request_id: Any, code: int, message: str, data: Any = None) -> bytes:
    """
    @param request_id: The request's id, or L{None} when it is unknown.
    @param code: The JSON-RPC error code.
    @param message: The error message.
    @param data: Extra data, or L{None} for none.
    @return: The error answer line.
    """
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return (_encode({"jsonrpc": "2.0", "id": request_id, "error": error}) + "\n").encode()


def _log(text: str) -> None:
    """
    @param text: A line for stderr.
    """
    sys.stderr.write(f"todo_server: {text}\n")
    sys.stderr.flush()


def main() -> int:
    """
    Serve stdin and stdout.

    @return: The exit status: 0 at end of input, or when the client goes away.
    """
    try:
        TodoServer().serve(sys.stdin.buffer, sys.stdout.buffer)
    except (BrokenPipeError, KeyboardInterrupt):
        # Nobody is listening any more; keep the interpreter's final flush quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
