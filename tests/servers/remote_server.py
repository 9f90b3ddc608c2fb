"""
A remote MCP server for the gateway's C{url} services: the official SDK's
FastMCP (C{MCPServer}) served by uvicorn on loopback.

  python remote_server.py PORT [streamable|sse|legacy-only|redirect] [--json] [--tls PEM] [--bearer T1,T2]

  - C{streamable}: Streamable HTTP at C{/mcp} (both eras: 2026-07-28 per
    request, and C{initialize} + C{Mcp-Session-Id}); answers as event
    streams, or JSON with C{--json}.
  - C{sse}: only the legacy HTTP+SSE transport (2024-11-05): GET C{/sse},
    POST C{/messages/}.
  - C{legacy-only}: Streamable HTTP as a 2025 server serves it:
    C{server/discover} (no session yet) is answered 400.
  - C{redirect}: every request answered 307 to C{/elsewhere}.
  - C{--tls PEM}: HTTPS with the certificate and key in C{PEM}.
  - C{--bearer T1,T2}: every MCP request must carry C{Authorization: Bearer}
    one of these tokens, else it is answered 401 (as a server behind its
    own auth answers).

Tools: C{count} (calls so far in this MCP session: state per session),
C{big} {mb} (a text of C{mb} MB), C{stall} {seconds}, C{die} (the process
kills itself mid-call), C{long_task} {steps, delay} (progress after each
step), C{headers} (the request headers it got, as JSON).

A call of C{html_answer} gets an HTML page, one of C{server_error} a 500,
one of C{auth_echo} a 401 whose text quotes the request's C{Authorization}
(as a careless upstream's does) (no such tool exists: the answer comes
before the server sees the call).

C{GET /_stats} (outside MCP) tells what it saw: C{sessions} (Mcp-Session-Id
values it minted), C{deleted} (those ended with DELETE), C{methods}
(requests by HTTP method), C{connections} (the client ports of the TCP
connections requests came on).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from starlette.responses import JSONResponse, Response

app = MCPServer("remote-test-server", version="1.0.0")
_counts: dict[str, int] = {}
_stats: dict[str, Any] = {"sessions": [], "deleted": [], "methods": {}, "connections": []}


def _session_key(ctx: Context) -> str:
    """
    The MCP session of a call: its C{Mcp-Session-Id} (Streamable HTTP), its
    C{session_id} query (HTTP+SSE), else C{"stateless"} (2026-07-28).
    """
    headers = ctx.headers or {}
    key = headers.get("mcp-session-id")
    if key:
        return key
    request = getattr(ctx.request_context, "request", None)
    query = getattr(request, "query_params", None)
    return (query.get("session_id") if query is not None else None) or "stateless"


@app.tool(description="How many times this tool has been called in this MCP session.")
async def count(ctx: Context) -> int:
    key = _session_key(ctx)
    _counts[key] = _counts.get(key, 0) + 1
    return _counts[key]


@app.tool(description="A text of mb megabytes.")
async def big(mb: float = 10.0) -> str:
    return "x" * int(mb * 1_000_000)


@app.tool(description="Sleep, then answer.")
async def stall(seconds: float = 60.0) -> str:
    await asyncio.sleep(seconds)
    return "woke up"


@app.tool(description="Kill this server process in the middle of the call.")
async def die() -> str:
    await asyncio.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


@app.tool(description="Work for steps x delay seconds, reporting progress after each step.")
async def long_task(ctx: Context, steps: int = 3, delay: float = 0.1) -> str:
    for step in range(1, steps + 1):
        await asyncio.sleep(delay)
        await ctx.report_progress(step, steps, f"step {step} of {steps}")
    return f"done {steps}"


@app.tool(description="The HTTP request headers of this call, as JSON.")
async def headers(ctx: Context) -> str:
    return json.dumps(dict(ctx.headers or {}), sort_keys=True)


def _observed(inner: Any) -> Any:
    """
    Count requests, remember minted and deleted sessions, serve C{/_stats}.
    """

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        if scope["path"] == "/_stats":
            await JSONResponse(_stats)(scope, receive, send)
            return
        method = scope["method"]
        _stats["methods"][method] = _stats["methods"].get(method, 0) + 1
        client = scope.get("client")
        if client and client[1] not in _stats["connections"]:
            _stats["connections"].append(client[1])
        asked = dict(scope["headers"]).get(b"mcp-session-id", b"").decode()

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                minted = dict(message.get("headers", [])).get(b"mcp-session-id", b"").decode()
                if minted and minted not in _stats["sessions"]:
                    _stats["sessions"].append(minted)
                if method == "DELETE" and asked and message["status"] < 300:
                    _stats["deleted"].append(asked)
            await send(message)

        await inner(scope, receive, sending)

    return asgi


def _bad_answers(inner: Any) -> Any:
    """
    A call of the tool C{html_answer} is answered 200 with an HTML page,
    one of C{server_error} with a 500: what a broken proxy in front of a
    server sends.
    """

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await inner(scope, receive, send)
            return
        messages = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if b'"html_answer"' in body:
            await Response("<html>502 Bad Gateway</html>", media_type="text/html")(scope, receive, send)
            return
        if b'"server_error"' in body:
            await Response("upstream exploded", status_code=500)(scope, receive, send)
            return
        if b'"auth_echo"' in body:
            given = dict(scope["headers"]).get(b"authorization", b"").decode()
            await Response(f"refused Authorization: {given}", status_code=401)(scope, receive, send)
            return
        replay = iter(messages)

        async def again() -> dict[str, Any]:
            replayed = next(replay, None)
            return replayed if replayed is not None else await receive()

        await inner(scope, again, send)

    return asgi


def _legacy_only(inner: Any) -> Any:
    """
    A 2025 server: a request without a session that is not C{initialize}
    (C{server/discover}) is answered 400 "Missing session ID".
    """

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers", []))
        if scope["type"] == "http" and headers.get(b"mcp-protocol-version") == b"2026-07-28":
            body = {"jsonrpc": "2.0", "id": "server-error", "error": {"code": -32600, "message": "Missing session ID"}}
            await JSONResponse(body, status_code=400)(scope, receive, send)
            return
        await inner(scope, receive, send)

    return asgi


def _bearer(inner: Any, tokens: set[str]) -> Any:
    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        given = dict(scope.get("headers", [])).get(b"authorization", b"").decode()
        if scope["type"] == "http" and given.removeprefix("Bearer ") not in tokens:
            await JSONResponse({"error": "invalid_token"}, status_code=401)(scope, receive, send)
            return
        await inner(scope, receive, send)

    return asgi


def _redirect() -> Any:
    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await Response(status_code=307, headers={"Location": "/elsewhere"})(scope, receive, send)

    return asgi


def main() -> None:
    port = int(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "streamable"
    if mode == "sse":
        web = app.sse_app()
    elif mode == "legacy-only":
        web = _legacy_only(app.streamable_http_app())
    elif mode == "redirect":
        web = _redirect()
    else:
        web = app.streamable_http_app(json_response="--json" in sys.argv)
    tls = sys.argv[sys.argv.index("--tls") + 1] if "--tls" in sys.argv else None
    if "--bearer" in sys.argv:
        web = _bearer(web, set(sys.argv[sys.argv.index("--bearer") + 1].split(",")))
    uvicorn.run(
        _observed(_bad_answers(web)),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="auto",
        ssl_certfile=tls,
        ssl_keyfile=tls,
    )


if __name__ == "__main__":
    main()
