"""
The gateway transports the benchmark measures (L{TRANSPORTS}): REST
(C{POST /services/todo/call}) and MCP Streamable HTTP (C{POST /mcp}), each
with how to open a session on a connection, the request to repeat, the
expected answer and how to end the session.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import HERE, LEGACY_VERSION, SERVICE, TOOL, BenchError, GatewayProcess
from loadgen import Connection, Response, build_request
from stats import Tally


def _rest_ok(response: Response) -> bool:
    body = response.body
    return response.status == 200 and b'"is_error":false' in body and b'"session_restarted":false' in body


def _rest_prepare(gateway: GatewayProcess, connection: Connection, session_id: str, tally: Tally) -> bytes:
    request = gateway.call_request(session_id)
    response = connection.request(request)  # the session's first call spawns its child
    if not tally.count("first call", response, _rest_ok(response)):
        raise BenchError(f"the first call of session {session_id} failed: {response.status} {response.body[:300]!r}")
    return request


def _rest_close(gateway: GatewayProcess, connection: Connection, session_id: str, tally: Tally) -> None:
    response = connection.request(gateway.delete_request(session_id))
    tally.count("DELETE", response, response.status == 200)


MCP_PATH = "/mcp"
MCP_TOOL = f"{SERVICE}.{TOOL}"  # the aggregate endpoint names tools <service>.<name>
MCP_CALL_ID = 2  # initialize is id 1; see _mcp_prepare
#: The Mcp-Session-Id the gateway minted for each of the benchmark's session names.
_mcp_sessions: dict[str, str] = {}


def _mcp_request(gateway: GatewayProcess, method: str, mcp_session: str | None, message: Any = None) -> bytes:
    """
    @param mcp_session: The C{Mcp-Session-Id}, or L{None} before C{initialize}.
    @param message: A JSON-RPC message (POST), or L{None}.
    @return: An authenticated legacy-era Streamable HTTP request to C{/mcp}.
    """
    headers = [("Authorization", gateway.authorization)]
    if mcp_session is not None:
        headers += [("Mcp-Session-Id", mcp_session), ("MCP-Protocol-Version", LEGACY_VERSION)]
    data = b""
    if message is not None:
        headers += [("Accept", "application/json, text/event-stream"), ("Content-Type", "application/json")]
        data = json.dumps(message, separators=(",", ":")).encode()
    return build_request(method, MCP_PATH, gateway.host_header, headers, data)


def _mcp_ok(response: Response) -> bool:
    body = response.body
    return (
        response.status == 200
        and response.header(b"content-type") == b"application/json"
        and body.startswith(b'{"jsonrpc":"2.0","id":%d,"result":' % MCP_CALL_ID)
        and b'"isError":false' in body
    )


def _mcp_prepare(gateway: GatewayProcess, connection: Connection, session_id: str, tally: Tally) -> bytes:
    """
    The legacy handshake on C{connection}: C{initialize} (the gateway mints the
    C{Mcp-Session-Id}, remembered under C{session_id}), C{notifications/initialized},
    then a first C{tools/call}, which spawns the session's child.

    @return: The C{tools/call} to repeat.  Its JSON-RPC id is always the same
        (one call at a time per session, so never two in flight); the gateway
        only keys requests in flight by id, and gives the child its own ids.
    """
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": LEGACY_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        },
    }
    response = connection.request(_mcp_request(gateway, "POST", None, initialize))
    minted = response.header(b"mcp-session-id")
    if not tally.count(
        "mcp initialize", response, response.status == 200 and b'"result"' in response.body and bool(minted)
    ):
        raise BenchError(f"initialize on {MCP_PATH} failed: {response.status} {response.body[:300]!r}")
    assert minted is not None
    mcp_session = _mcp_sessions[session_id] = minted.decode("latin-1")
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    response = connection.request(_mcp_request(gateway, "POST", mcp_session, initialized))
    if not tally.count("mcp initialized", response, response.status == 202):
        raise BenchError(f"notifications/initialized on {MCP_PATH}: {response.status} {response.body[:300]!r}")
    call = {"jsonrpc": "2.0", "id": MCP_CALL_ID, "method": "tools/call", "params": {"name": MCP_TOOL, "arguments": {}}}
    request = _mcp_request(gateway, "POST", mcp_session, call)
    response = connection.request(request)
    if not tally.count("mcp first call", response, _mcp_ok(response)):
        raise BenchError(f"the first tools/call of {mcp_session} failed: {response.status} {response.body[:300]!r}")
    return request


def _mcp_close(gateway: GatewayProcess, connection: Connection, session_id: str, tally: Tally) -> None:
    response = connection.request(_mcp_request(gateway, "DELETE", _mcp_sessions.pop(session_id)))
    tally.count("mcp DELETE", response, response.status == 200)


@dataclass(frozen=True)
class Transport:
    """
    One way to make a warm tool call through the gateway.  Each entry of
    L{TRANSPORTS} is a row of the latency and throughput tables, a bar group
    of the plot and a key of results.json.

    @ivar key: Its key in results.json.
    @ivar label: Its row label.
    @ivar prepare: Opens session C{session_id} on the connection (its first
        call, a handshake, ...) and returns the request to repeat as a warm call.
    @ivar ok: Whether a response is the expected answer.
    @ivar close: Ends the session.
    @ivar wrk_script: A wrk Lua script taking C{PREFIX SERVICE TOOL} whose
        thread I{i} calls in session PREFIX+I{i}, or L{None}.
    """

    key: str
    label: str
    prepare: Callable[[GatewayProcess, Connection, str, Tally], bytes]
    ok: Callable[[Response], bool]
    close: Callable[[GatewayProcess, Connection, str, Tally], None]
    wrk_script: Path | None = None


REST = Transport("rest", f"REST POST /services/{SERVICE}/call", _rest_prepare, _rest_ok, _rest_close, HERE / "call.lua")
# Streamable HTTP, legacy era: initialize, then tools/call with the
# Mcp-Session-Id; DELETE /mcp ends the session.  No wrk script: wrk would
# need each thread to carry the id the gateway minted for its session.
MCP = Transport("mcp", f"MCP POST {MCP_PATH} tools/call", _mcp_prepare, _mcp_ok, _mcp_close)
TRANSPORTS: list[Transport] = [REST, MCP]
