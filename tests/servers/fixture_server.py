"""
The configurable stdio MCP server the gateway's tests supervise.

Run as C{python tests/servers/fixture_server.py [flags]}; C{--help} lists the
flags.  By default it speaks only the legacy era (C{server/discover} gets
-32601, as from the Node reference servers); C{--modern} makes it dual-era.

Tools: echo, add, sleep (in the background, cancellable), crash, big, fail,
rpc_error, image, ask (server-to-client requests), notify, counter, pid,
spawn_grandchild, slow_progress (progress notifications); with
C{--tools-pages N} also C{page{k}_tool{j}}.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

# The helper sits next to this script; say so explicitly, for -I and PYTHONSAFEPATH.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _mcp import Request, RPCError, Server, Tool, ToolFailure, log, main, text_result

IMAGE_BYTES = b"\x89PNG\r\n\x1a\n\x00\x00"
EXTRA_TOOLS_PER_PAGE = 2


def _number(arguments: dict[str, Any], name: str) -> float:
    """
    @param arguments: A call's arguments.
    @param name: The argument wanted.
    @return: It, a number.
    @raise ToolFailure: If it is missing or not a number.
    """
    value = arguments.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ToolFailure(f"argument {name!r} must be a number")
    return value


def _describe(label: str, answer: dict[str, Any] | None) -> str:
    """
    @param label: What was asked, e.g. C{"sampling"}.
    @param answer: The client's response message, or L{None} on timeout.
    @return: E.g. C{"sampling error -32601"}, C{"ping ok"}, C{"sampling timeout"}.
    """
    if answer is None:
        return f"{label} timeout"
    error = answer.get("error")
    if error is not None:
        return f"{label} error {error.get('code') if isinstance(error, dict) else error!r}"
    return f"{label} ok"


class FixtureServer(Server):
    """
    L{Server} with the behaviours the command-line flags ask for.
    """

    def __init__(self, options: argparse.Namespace) -> None:
        """
        @param options: The parsed command line.
        """
        self.options = options
        self.calls = 0
        self.answered_calls = 0
        self.first_list = True
        self._count_lock = threading.Lock()
        no_args: dict[str, dict[str, Any]] = {}
        tools = [
            Tool(
                "echo",
                "Return the given text unchanged.",
                lambda r, a: str(a.get("text", "")),
                {"text": {"type": "string", "description": "The text to echo."}},
                ("text",),
            ),
            Tool(
                "add",
                "Add two numbers and return the sum.",
                self.add,
                {
                    "a": {"type": "number", "description": "The first addend."},
                    "b": {"type": "number", "description": "The second addend."},
                },
                ("a", "b"),
            ),
            Tool(
                "sleep",
                "Wait the given number of seconds, then answer; cancellable.",
                self.sleep,
                {"seconds": {"type": "number", "description": "How long to wait."}},
                ("seconds",),
                background=True,
            ),
            Tool("crash", "Exit the server process at once with status 3, without answering.", self.crash, no_args),
            Tool(
                "big",
                "Return a text of the given number of 'x' characters.",
                lambda r, a: "x" * int(_number(a, "bytes")),
                {"bytes": {"type": "integer", "description": "How many characters."}},
                ("bytes",),
            ),
            Tool("fail", "Always fail, with an isError result.", self.fail, no_args),
            Tool("rpc_error", "Always fail, with JSON-RPC error -32042.", self.rpc_error, no_args),
            Tool("image", "Return a tiny PNG image block and a text block.", self.image, no_args),
            Tool(
                "ask",
                "Send sampling/createMessage (id 1) and ping (id 'srv-ping') to the client, then report the answers.",
                self.ask,
                no_args,
                background=True,
            ),
            Tool(
                "notify",
                "Add 'late_tool', send notifications/tools/list_changed, answer 'ok'.",
                self.notify_tool,
                no_args,
            ),
            Tool("counter", "Count the calls to this tool in this process and return the count.", self.count, no_args),
            Tool("pid", "Return this process's id and process group: 'pid=N pgrp=M'.", self.pid, no_args),
            Tool("meta", "Return the request's params._meta as JSON text.", self.meta, no_args),
            Tool(
                "fill",
                "Write a file of the given size (MiB) in the working directory; report its size.",
                self.fill,
                {"megabytes": {"type": "integer", "description": "How many MiB."}},
                ("megabytes",),
            ),
            Tool(
                "burn",
                "Spend CPU time for the given number of seconds (a CPU limit stops the process first).",
                self.burn,
                {"seconds": {"type": "number", "description": "CPU seconds."}},
                ("seconds",),
            ),
            Tool(
                "hog",
                "Allocate the given MiB; a failed allocation ends the process with a MemoryError traceback.",
                self.hog,
                {"megabytes": {"type": "integer", "description": "How many MiB."}},
                ("megabytes",),
            ),
            Tool(
                "threads",
                "Start the given number of sleeping threads; a refused start ends the process.",
                self.threads,
                {"count": {"type": "integer", "description": "How many threads."}},
                ("count",),
            ),
            Tool(
                "spawn_grandchild",
                "Start 'sleep 300' as a child of this server and return its pid.",
                self.spawn,
                no_args,
            ),
            Tool(
                "slow_progress",
                "Send notifications/progress (steps of the request's progressToken), then answer; cancellable.",
                self.slow_progress,
                {
                    "steps": {"type": "integer", "description": "How many progress notifications (default 3)."},
                    "delay": {"type": "number", "description": "Seconds between them (default 0.05)."},
                },
                background=True,
            ),
        ]
        self.base_tools = {tool.name for tool in tools}
        for page in range(1, options.tools_pages + 1):
            for number in range(1, EXTRA_TOOLS_PER_PAGE + 1):
                name = f"page{page}_tool{number}"
                tools.append(Tool(name, f"Extra tool {number} of page {page}; returns its name.", self.named, no_args))
        super().__init__("fixture", tools, modern=options.modern)

    # Tools.

    def add(self, request: Request, arguments: dict[str, Any]) -> dict[str, Any]:
        """
        @return: The sum of C{a} and C{b}, as text and as C{structuredContent} {"sum"}.
        """
        total = _number(arguments, "a") + _number(arguments, "b")
        result = text_result(str(total))
        result["structuredContent"] = {"sum": total}
        return result

    def sleep(self, request: Request, arguments: dict[str, Any]) -> str:
        """
        Runs on its own thread; a cancellation ends the wait and suppresses the answer.

        @return: C{"slept <seconds>"}.
        """
        seconds = _number(arguments, "seconds")
        request.cancelled.wait(seconds)
        return f"slept {seconds}"

    def crash(self, request: Request, arguments: dict[str, Any]) -> str:
        """
        Exit with status 3 at once, answering nothing.
        """
        os._exit(3)

    def fail(self, request: Request, arguments: dict[str, Any]) -> str:
        """
        @raise ToolFailure: Always: an C{isError} result.
        """
        raise ToolFailure("this tool always fails")

    def rpc_error(self, request: Request, arguments: dict[str, Any]) -> str:
        """
        @raise RPCError: Always: -32042 "custom failure" {"why": "testing"}.
        """
        raise RPCError(-32042, "custom failure", {"why": "testing"})

    def image(self, request: Request, arguments: dict[str, Any]) -> dict[str, Any]:
        """
        @return: An image block (10 bytes of PNG, base64) and a text block.
        """
        data = base64.b64encode(IMAGE_BYTES).decode()
        return {
            "content": [
                {"type": "image", "data": data, "mimeType": "image/png"},
                {"type": "text", "text": f"a PNG of {len(IMAGE_BYTES)} bytes"},
            ],
            "isError": False,
        }

    def ask(self, request: Request, arguments: dict[str, Any]) -> dict[str, Any]:
        """
        Runs on its own thread: asks the client twice, waits up to 60 seconds for each answer.

        @return: E.g. C{"sampling error -32601; ping ok"}, with the client's
            response messages as C{structuredContent} {"sampling", "ping"}.
        """
        sampling = self.ask_client(
            1,
            "sampling/createMessage",
            {"messages": [{"role": "user", "content": {"type": "text", "text": "Say hi."}}], "maxTokens": 16},
        )
        ping = self.ask_client("srv-ping", "ping")
        answers = {"sampling": sampling.wait(60), "ping": ping.wait(60)}
        result = text_result("; ".join(_describe(label, answer) for label, answer in answers.items()))
        result["structuredContent"] = {label: answer for label, answer in answers.items() if answer is not None}
        return result

    def notify_tool(self, request: Request, arguments: dict[str, Any]) -> str:
        """
        Add the tool C{late_tool}, then send C{notifications/tools/list_changed}.

        @return: C{"ok"}.
        """
        late = Tool("late_tool", "A tool added by 'notify'; returns its name.", self.named, {})
        self.tools[late.name] = late
        self.base_tools.add(late.name)
        self.notify("notifications/tools/list_changed")
        return "ok"

    def count(self, request: Request, arguments: dict[str, Any]) -> str:
        """
        @return: How many times this process has been called, this call included.
        """
        self.calls += 1
        return str(self.calls)

    def fill(self, request: Request, arguments: dict[str, Any]) -> str:
        """
        @return: The size written (a file-size limit kills the process with SIGXFSZ first).
        """
        # Python ignores SIGXFSZ (and gets EFBIG instead); die of it as a C program would.
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        chunk = b"x" * (1024 * 1024)
        with open("fill.bin", "wb") as handle:
            for _ in range(int(_number(arguments, "megabytes"))):
                handle.write(chunk)
                handle.flush()
        return str(os.path.getsize("fill.bin"))

    def burn(self, request: Request, arguments: dict[str, Any]) -> str:
        """
        @return: The CPU seconds spent (a CPU limit kills the process with SIGXCPU first).
        """
        until = time.process_time() + float(_number(arguments, "seconds"))
        while time.process_time() < until:
            pass
        return f"{time.process_time():.1f}"

    def hog(self, request: Request, arguments: dict[str, Any]) -> str:
        """
        @return: The MiB allocated; a failed allocation ends the process as an
            unhandled MemoryError would (traceback on stderr, status 1).
        """
        try:
            block = bytearray(int(_number(arguments, "megabytes")) * 1024 * 1024)
        except MemoryError:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
        return str(len(block) // (1024 * 1024))

    def threads(self, request: Request, arguments: dict[str, Any]) -> str:
        """
        @return: How many threads were started; a refused start ends the process (status 1).
        """
        count = int(_number(arguments, "count"))
        start_threads(count)
        return str(count)

    def meta(self, request: Request, arguments: dict[str, Any]) -> str:
        """
        @return: The request's C{params._meta} as JSON (C{{}} when absent).
        """
        return json.dumps(request.params.get("_meta") or {}, sort_keys=True)

    def pid(self, request: Request, arguments: dict[str, Any]) -> str:
        """
        @return: C{"pid=N pgrp=M"}.
        """
        return f"pid={os.getpid()} pgrp={os.getpgrp()}"

    def spawn(self, request: Request, arguments: dict[str, Any]) -> str:
        """
        Start C{sleep 300} in this process group (no setsid).

        @return: Its pid.
        """
        # stdout and stderr are inherited on purpose: like a real grandchild
        # (npx -> node) it keeps the server's pipes open until it dies.
        child = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)
        return str(child.pid)

    def slow_progress(self, request: Request, arguments: dict[str, Any]) -> str:
        """
        Runs on its own thread: C{steps} progress notifications carrying the
        request's C{params._meta.progressToken} (none without one), C{delay}
        seconds apart; a cancellation stops it.

        @return: C{"done <steps>"}.
        """
        steps = int(arguments.get("steps", 3))
        delay = float(arguments.get("delay", 0.05))
        meta = request.params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        for step in range(1, steps + 1):
            if request.cancelled.wait(delay):
                return "cancelled"
            if token is not None:
                params = {"progressToken": token, "progress": step, "total": steps, "message": f"step {step}"}
                self.notify("notifications/progress", params)
        return f"done {steps}"

    def named(self, request: Request, arguments: dict[str, Any]) -> str:
        """
        @return: The tool's own name (for the C{page{k}_tool{j}} tools).
        """
        return str(request.params["name"])

    # Protocol behaviours.

    def dispatch(self, request: Request) -> dict[str, Any] | None:
        """
        With C{--no-handshake-reply}, swallow C{initialize} and C{server/discover};
        with C{--exit-after-handshake S}, exit with status 4 S seconds after answering it.
        """
        if self.options.no_handshake_reply and request.method in ("initialize", "server/discover"):
            return None
        if self.options.exit_after_handshake is not None and request.method in ("initialize", "server/discover"):
            timer = threading.Timer(self.options.exit_after_handshake, os._exit, (4,))
            timer.daemon = True
            timer.start()
        return super().dispatch(request)

    def on_list_tools(self, request: Request) -> dict[str, Any] | None:
        """
        C{--list-changed-first} and C{--tools-sleep} (answered from a thread, cancellable).
        """
        if self.options.list_changed_first and self.first_list:
            self.notify("notifications/tools/list_changed")
        self.first_list = False
        if self.options.tools_sleep > 0:
            self.background(request, lambda: self._list_later(request))
            return None
        return self._list(request)

    def _list_later(self, request: Request) -> dict[str, Any] | None:
        """
        @return: The tool list, after C{--tools-sleep} seconds.
        """
        request.cancelled.wait(self.options.tools_sleep)
        return self._list(request)

    def _list(self, request: Request) -> dict[str, Any]:
        """
        @return: The tool list, or with C{--tools-pages N} the page named by
            the cursor (C{page-2}, ...): page 1 holds the base tools.
        """
        pages = self.options.tools_pages
        if pages == 0:
            return {"tools": [tool.describe() for tool in self.tools.values()]}
        cursor = request.params.get("cursor")
        if cursor is None:
            page = 1
        elif isinstance(cursor, str) and cursor.startswith("page-") and cursor[5:].isdigit():
            page = int(cursor[5:])
        else:
            page = 0
        if not 1 <= page <= pages:
            raise RPCError(-32602, f"Invalid cursor: {cursor!r}")
        prefix = f"page{page}_"
        tools = [
            tool.describe()
            for tool in self.tools.values()
            if tool.name.startswith(prefix) or (page == 1 and tool.name in self.base_tools)
        ]
        result: dict[str, Any] = {"tools": tools}
        if page < pages:
            result["nextCursor"] = f"page-{page + 1}"
        return result

    def on_call_tool(self, request: Request) -> dict[str, Any] | None:
        """
        C{--close-stdout-on-call}: close stdout instead of answering;
        C{--stderr-flood}: write that many bytes to stderr first.
        """
        if self.options.close_stdout_on_call:
            log("closing stdout and staying up (--close-stdout-on-call)")
            sys.stdout.flush()
            os.close(1)
            return None
        flood = self.options.stderr_flood
        if flood > 0:
            line = b"flood " + b"e" * 93 + b"\n"
            rest = flood % len(line)
            sys.stderr.buffer.write(line * (flood // len(line)) + (b"e" * (rest - 1) + b"\n" if rest else b""))
            sys.stderr.buffer.flush()
        return super().on_call_tool(request)

    def send_response(self, request: Request | None, message: dict[str, Any]) -> None:
        """
        C{--oversized}, C{--garbage} and C{--crash-after}.
        """
        is_call = request is not None and request.method == "tools/call"
        oversized = self.options.oversized
        if is_call and oversized > 0 and "result" in message:
            size = len(json.dumps(message, separators=(",", ":")))
            message["result"].setdefault("_meta", {})["fixture/padding"] = "x" * max(0, oversized - size)
        if self.options.garbage:
            self.write(b"this is not json", message)
        else:
            self.write(message)
        if is_call and self.options.crash_after is not None:
            with self._count_lock:
                self.answered_calls += 1
                done = self.answered_calls >= self.options.crash_after
            if done:
                log(f"crashing after {self.answered_calls} tools/call answers")
                os._exit(5)

    def on_eof(self) -> None:
        """
        C{--ignore-eof}: sleep forever instead of exiting.
        """
        if self.options.ignore_eof:
            log("stdin closed; staying up (--ignore-eof)")
            while True:
                time.sleep(3600)


def start_threads(count: int) -> None:
    """
    Start C{count} sleeping daemon threads; if the kernel refuses one, end
    the process at once (status 1) as a server that cannot start a thread would.
    """
    for _ in range(count):
        try:
            threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
        except RuntimeError as error:
            log(f"cannot start a thread: {error}")
            os._exit(1)


def parse(argv: list[str]) -> argparse.Namespace:
    """
    @param argv: The command-line arguments.
    @return: The options.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument("--modern", action="store_true", help="also speak 2026-07-28 (dual-era)")
    parser.add_argument("--tools-pages", type=int, default=0, metavar="N", help="paginate tools/list in N pages")
    parser.add_argument("--list-changed-first", action="store_true", help="list_changed before the first tools/list")
    parser.add_argument("--stderr-flood", type=int, default=0, metavar="BYTES", help="stderr bytes per tools/call")
    parser.add_argument("--garbage", action="store_true", help="a non-JSON stdout line before every response")
    parser.add_argument("--oversized", type=int, default=0, metavar="BYTES", help="pad tools/call answers")
    parser.add_argument("--exit-at-start", type=int, default=None, metavar="CODE", help="fail at once with CODE")
    parser.add_argument("--no-handshake-reply", action="store_true", help="never answer initialize/discover")
    parser.add_argument("--ignore-eof", action="store_true", help="keep running after stdin closes")
    parser.add_argument("--ignore-sigterm", action="store_true", help="ignore SIGTERM")
    parser.add_argument("--start-delay", type=float, default=0, metavar="SECONDS", help="sleep before reading")
    parser.add_argument("--start-threads", type=int, default=0, metavar="N", help="start N threads before serving")
    parser.add_argument("--crash-after", type=int, default=None, metavar="N", help="exit 5 after N tools/call answers")
    parser.add_argument("--tools-sleep", type=float, default=0, metavar="SECONDS", help="delay tools/list answers")
    parser.add_argument(
        "--exit-after-handshake", type=float, default=None, metavar="SECONDS", help="exit 4 S s after the handshake"
    )
    parser.add_argument(
        "--close-stdout-on-call", action="store_true", help="on tools/call close stdout and keep running"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse(sys.argv[1:])
    if options.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if options.start_delay > 0:
        time.sleep(options.start_delay)
    start_threads(options.start_threads)
    if options.exit_at_start is not None:
        log("boom: cannot start")
        sys.exit(options.exit_at_start)
    main(FixtureServer(options))
