"""
The JSON-RPC 2.0 peer that talks to one MCP child over its stdin and stdout.

L{ChildProtocol} is a L{ProcessProtocol}: it frames stdout as NDJSON, matches
responses to our requests by id, answers the child's own requests (C{ping}
with C{{}}, everything else with -32601 so no tool call waits on an answer
that never comes), hands notifications to a callback, and drains stderr
continuously into the log while keeping its tail for error reports.  It knows
nothing of MCP eras or sessions.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from mcpgateway.lib.deferreds import Shared
from mcpgateway.lib.redact import SECRET_VALUES
from mcpgateway.mcp.exits import ChildExited, ExitInfo, StderrTail
from mcpgateway.mcp.framing import LineBuffer, LineTooLong
from mcpgateway.mcp.jsonrpc import decode, deliver, encode_line, error_member, settle
from mcpgateway.mcp.spec import METHOD_NOT_FOUND
from mcpgateway.observe.logs import logger

__all__ = ["STDOUT_CLOSED_GRACE", "ChildProtocol", "NotificationHandler", "ProgressRoute", "RequestHandler"]

#: Seconds a child may keep running after closing its stdout before it is
#: killed as broken (a child that exits closes stdout first, then is reaped).
STDOUT_CLOSED_GRACE = 2.0

NotificationHandler = Callable[[str, dict[str, Any]], None]
RequestHandler = Callable[[str, dict[str, Any]], "Deferred[dict[str, Any]] | None"]
ProgressRoute = Callable[[dict[str, Any]], None]


class ChildProtocol(ProcessProtocol):
    """
    A JSON-RPC peer over a child's pipes.

    @ivar ended: Fired with an L{ExitInfo} once the process has ended and been reaped.
    @ivar stderr: The L{StderrTail}.
    """

    def __init__(
        self,
        label: str,
        clock: IReactorTime,
        max_line: int,
        on_notification: NotificationHandler | None = None,
    ) -> None:
        """
        @param label: Names the child in the log, e.g. C{"todo[4711]"}.
        @param clock: Time source for the stderr rate limit.
        @param max_line: The longest stdout line accepted, in bytes.
        @param on_notification: Called with each notification's method and params.
        """
        self.log = logger(f"mcpgateway.child.{label}")
        self.label = label
        self._clock = clock
        self._stdout_check: Any = None
        self.stderr = StderrTail(self.log, clock)
        self.ended: Shared[ExitInfo] = Shared()
        self.exit_info: ExitInfo | None = None
        self._lines = LineBuffer(max_line)
        self._pending: dict[int, Deferred[dict[str, Any]]] = {}
        self._next_id = 1
        self._on_notification = on_notification
        # Optional hooks (see mcpgateway.front.server); with none set the behaviour is
        # the default one: ping answered, other child requests -32601, every
        # notification to on_notification.
        #: Consulted first for each request of the child: a Deferred of the
        #: result (or failing with RPCError) answers it; None means "use the
        #: built-in answer".
        self.request_handler: RequestHandler | None = None
        #: notifications/progress whose progressToken is a key here go to that
        #: route only (the gateway mints the tokens it registers).
        self.progress_routes: dict[str | int, ProgressRoute] = {}
        #: Also told of every other notification, after on_notification.
        self.listeners: list[NotificationHandler] = []
        #: Asked, when the process has ended, what stopped it (L{ExitInfo.cause}).
        self.explain_exit: Callable[[ExitInfo], dict[str, Any] | None] | None = None
        self._violation: str | None = None
        self.pid: int | None = None

    def connectionMade(self) -> None:
        self.pid = getattr(self.transport, "pid", None)

    # -- sending -----------------------------------------------------------

    @property
    def alive(self) -> bool:
        """
        @return: Whether the process still runs and may be sent requests.
        """
        return self.exit_info is None and self._violation is None and self.transport is not None

    def request(self, method: str, params: dict[str, Any] | None = None) -> Deferred[dict[str, Any]]:
        """
        Send a request; the result fires with the response's C{result}.

        Cancelling the returned L{Deferred} sends C{notifications/cancelled}
        for it, and a late response is then ignored.

        @param method: The JSON-RPC method.
        @param params: Its params.
        @return: Fires with the result object, or fails with L{RPCError} or
            L{ChildExited}.
        """
        if not self.alive:
            info = self.exit_info or ExitInfo(None, None, self._violation or "not running", self.stderr.text())
            return fail(ChildExited(info))
        request_id = self._next_id
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        try:
            line = encode_line(message)
        except ValueError as error:
            return fail(error)
        self._next_id += 1

        def cancel(d: Deferred[dict[str, Any]]) -> None:
            if self._pending.pop(request_id, None) is not None and self.alive:
                self.notify("notifications/cancelled", {"requestId": request_id, "reason": "cancelled by the gateway"})

        result: Deferred[dict[str, Any]] = Deferred(cancel)
        self._pending[request_id] = result
        self._write(line)
        return result

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """
        Send a notification.

        @param method: The JSON-RPC method.
        @param params: Its params.
        """
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self._send(message)

    def _send(self, message: dict[str, Any]) -> None:
        try:
            line = encode_line(message)
        except ValueError as error:
            self.log.warn(
                "could not send a {method} message: {error}", method=message.get("method", "reply"), error=error
            )
            return
        self._write(line)

    def _write(self, line: bytes) -> None:
        if self.transport is not None and self.exit_info is None:
            self.transport.write(line)

    # -- receiving ---------------------------------------------------------

    def outReceived(self, data: bytes) -> None:
        if self._violation is not None:
            return
        try:
            lines = self._lines.feed(data)
        except LineTooLong as error:
            self.violate(f"sent a stdout line over the limit ({error.limit} bytes)")
            return
        for line in lines:
            self._received(line)

    def _received(self, line: bytes) -> None:
        try:
            # json.loads(line, parse_constant=..., parse_float=...) without a decoder per line
            message = decode(line.decode(json.detect_encoding(line), "surrogatepass"))
        except ValueError:
            self.log.warn("stdout: skipped a line that is not JSON: {line!r}", line=_head(line))
            return
        except RecursionError:
            self.violate("sent a message nested too deeply to read")
            return
        if not isinstance(message, dict):
            self.log.warn("stdout: skipped a JSON value that is not an object: {line!r}", line=_head(line))
            return
        method = message.get("method")
        if method is not None:
            if not isinstance(method, str):
                self.log.warn("stdout: skipped a message whose method is not a string: {line!r}", line=_head(line))
            elif "id" in message:
                self._answer(message["id"], method, message.get("params"))
            else:
                params = message.get("params")
                self._notified(method, params if isinstance(params, dict) else {})
            return
        request_id = message.get("id")
        waiting = self._pending.pop(request_id, None) if type(request_id) is int else None
        if waiting is None:
            self.log.debug("stdout: dropped a response to no pending request: {id!r}", id=request_id)
            return
        settle(waiting, message)

    def _notified(self, method: str, params: dict[str, Any]) -> None:
        deliver(method, params, self.progress_routes, [self._on_notification, *self.listeners])

    def _answer(self, request_id: Any, method: str, params: Any = None) -> None:
        if self.request_handler is not None:
            answer = self.request_handler(method, params if isinstance(params, dict) else {})
            if answer is not None:
                answer.addCallbacks(
                    lambda result: self._reply(request_id, result),
                    lambda failure: self._send({"jsonrpc": "2.0", "id": request_id, "error": error_member(failure)}),
                )
                return
        if method == "ping":
            self._send({"jsonrpc": "2.0", "id": request_id, "result": {}})
            return
        self.log.info("answered the child's request {method!r} with -32601", method=method)
        self._send(
            {
                "jsonrpc": "2.0",
                "id": request_id,
                "error": {
                    "code": METHOD_NOT_FOUND,
                    "message": f"{method} is not available through this gateway",
                },
            }
        )

    def _reply(self, request_id: Any, result: Any) -> None:
        try:
            line = encode_line({"jsonrpc": "2.0", "id": request_id, "result": result})
        except ValueError as error:
            self._send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32603, "message": str(error)}})
            return
        self._write(line)

    def errReceived(self, data: bytes) -> None:
        self.stderr.feed(data)

    def outConnectionLost(self) -> None:
        # A child that exits closes stdout just before it is reaped; one that
        # closes stdout and keeps running can never answer again.
        if self.exit_info is None:
            self._stdout_check = self._clock.callLater(STDOUT_CLOSED_GRACE, self._stdout_closed)

    def _stdout_closed(self) -> None:
        self._stdout_check = None
        self.violate("closed its stdout but kept running")

    # -- ending ------------------------------------------------------------

    def violate(self, reason: str) -> None:
        """
        The child broke the protocol: fail its requests and kill it.

        @param reason: What it did, for the error report.
        """
        if self._violation is not None or self.exit_info is not None:
            return
        self.log.error("{reason}; killing it", reason=reason)
        self.abort(reason)

    def abort(self, reason: str) -> None:
        """
        End the child now (SIGKILL to its group) and fail its requests, e.g.
        a child still starting when the gateway stops.

        @param reason: Why, reported as how it ended.
        """
        if self._violation is not None or self.exit_info is not None:
            return
        self._violation = reason
        self._fail_pending(ExitInfo(None, None, reason, self.stderr.text()))
        self.signal_group(signal.SIGKILL)

    def signal_group(self, signum: int) -> None:
        """
        Send C{signum} to the child's process group (it is the group leader).

        @param signum: The signal.
        """
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        code = sig = None
        if isinstance(value, ProcessTerminated):
            code, sig = value.exitCode, value.signal
        elif isinstance(value, ProcessDone):
            code = 0
        info = ExitInfo(code, sig, self._violation, self.stderr.text())
        if self.explain_exit is not None:
            info.cause = self.explain_exit(info)
        self.exit_info = info
        if self._stdout_check is not None and self._stdout_check.active():
            self._stdout_check.cancel()
        self._stdout_check = None
        # The leader is gone; take whatever it left in its group with it
        # (e.g. the node process under npx).  The group id cannot be reused
        # while any member is alive.
        self.signal_group(signal.SIGKILL)
        self._fail_pending(info)
        self.ended.fire(info)

    def _fail_pending(self, info: ExitInfo) -> None:
        pending, self._pending = self._pending, {}
        for waiting in pending.values():
            waiting.errback(ChildExited(info))


def _head(line: bytes) -> bytes:
    """
    @return: The start of a line for the log, redacted before it is cut
        (a secret the cut would split leaves no piece behind).
    """
    if not SECRET_VALUES:
        return line[:200]
    return SECRET_VALUES.head(line[: 1 << 20].decode("utf-8", "replace"), 200).encode()
