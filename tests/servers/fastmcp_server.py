# /// script
# requires-python = ">=3.10"
# dependencies = ["mcp>=2.3,<3"]
# ///
"""
A FastMCP server, as people write one: a single file on the official MCP
Python SDK's high-level server class (C{FastMCP}, called C{MCPServer} since
mcp 2), its dependencies in inline script metadata (PEP 723), started with
C{uv run --script fastmcp_server.py}, which installs them from PyPI into
uv's cache on first start.

Tools:
  - C{count}: how many times it has been called in this process (state per
    process, so per gateway session).
  - C{long_task} {steps, delay}: C{steps} steps of C{delay} seconds, each
    reported with C{notifications/progress} when the caller asked for them.
  - C{chatter} {kib}: write C{kib} KiB to stderr in 1 KiB lines, then answer
    (a server that logs heavily).
"""

from __future__ import annotations

import asyncio
import sys

from mcp.server.mcpserver import Context, MCPServer

app = MCPServer("fastmcp-test-server", version="1.0.0")
_calls = {"count": 0}

#: One line of stderr chatter: 1 KiB with its newline.
_LINE = ("stderr chatter " * 80)[:1023] + "\n"


@app.tool(description="How many times this tool has been called in this server process.")
async def count() -> int:
    """
    Count this call.

    @return: The number of calls so far in this process, this one included.
    """
    _calls["count"] += 1
    return _calls["count"]


@app.tool(description="Work for steps x delay seconds, reporting progress after each step.")
async def long_task(ctx: Context, steps: int = 5, delay: float = 0.2) -> str:
    """
    A long-running operation that reports its progress.

    @param ctx: The request's context (progress goes to the caller's token).
    @param steps: How many steps to take.
    @param delay: Seconds per step.
    @return: C{"done <steps>"}.
    """
    for step in range(1, steps + 1):
        await asyncio.sleep(delay)
        await ctx.report_progress(step, steps, f"step {step} of {steps}")
    return f"done {steps}"


@app.tool(description="Write kib KiB to stderr, in 1 KiB lines, then answer.")
async def chatter(kib: int = 256) -> str:
    """
    Log heavily: a server whose stderr nobody reads blocks here once the
    pipe is full.

    @param kib: How many KiB to write.
    @return: How many bytes were written.
    """
    sys.stderr.write(_LINE * kib)
    sys.stderr.flush()
    return f"wrote {kib * len(_LINE)} bytes to stderr"


if __name__ == "__main__":
    app.run()
