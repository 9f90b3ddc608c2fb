"""
A stateful stdio MCP server built on the official MCP Python SDK.

The SDK serves both protocol eras by itself: the client's first request
decides (a C{server/discover} carrying the 2026-07-28 C{_meta} envelope opens
the modern era, anything else the legacy C{initialize} handshake).  The
gateway's tests use it as a reference implementation next to the stdlib-only
servers.

Tools:
  - C{remember} {key, value}: store C{value} under C{key} in this process.
  - C{recall} {key}: return the value stored under C{key}.
  - C{shout} {text}: return C{text} in upper case.

Prompt C{greet} {name}; resource C{memo://notes} (what C{remember} stored).

Run it as C{python tests/servers/sdk_server.py}.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

app = MCPServer("sdk-server", version="1.0.0")
_memory: dict[str, str] = {}


@app.tool(description="Store a value under a key; it is kept for the life of this server process.")
async def remember(key: str, value: str) -> str:
    """
    Store a value under a key, kept for the life of this server process.

    @param key: The name to store the value under.
    @param value: The value to store.
    @return: A confirmation text.
    """
    _memory[key] = value
    return f"remembered {key}"


@app.tool(description="Return the value an earlier remember call stored under a key.")
async def recall(key: str) -> str:
    """
    Return the value stored under a key by an earlier remember call.

    @param key: The name the value was stored under.
    @return: The stored value.
    @raise ToolError: Nothing is stored under C{key} (an C{isError} result).
    """
    if key not in _memory:
        raise ToolError(f"nothing remembered under {key!r}")
    return _memory[key]


@app.tool(description="Return the given text in upper case.")
async def shout(text: str) -> str:
    """
    Return the text in upper case.

    @param text: The text to shout.
    @return: C{text.upper()}.
    """
    return text.upper()


@app.prompt(description="A greeting prompt for a name.")
def greet(name: str) -> str:
    """
    A prompt asking to greet someone.

    @param name: Who to greet.
    @return: The prompt text.
    """
    return f"Please greet {name}."


@app.resource("memo://notes", name="notes", description="What remember stored so far.", mime_type="text/plain")
def notes() -> str:
    """
    The remembered keys and values, one per line.

    @return: The text.
    """
    return "\n".join(f"{key}={value}" for key, value in sorted(_memory.items()))


if __name__ == "__main__":
    app.run()
