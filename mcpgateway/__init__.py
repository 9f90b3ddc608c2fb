"""
mcpgateway: supervised stdio MCP servers (and remote ones) behind one governed HTTP front.

The folders are the layers of a request's path, each importing only those
below it (ARCHITECTURE.rst; checked by C{lint-imports}).  One REST call::

    http/site.py          the HTTP server: body, header and time limits
    http/rest.py          the route: body read and checked
    http/guard.py         credentials (policy/auth.py), rate limit (policy/ratelimit.py)
    calls.py              the one call path of both doors: span, metric, access log (observe/)
    gateway.py            the façade: the session's child for the service
    sessions.py           the session registry and its limits
    children/service.py   a warm child (pool.py) or a start, with backoff (backoff.py, sandbox/)
    children/child.py     one MCP server: handshake, era, call (over an mcp/peer.py Peer)
    mcp/stdio.py          JSON-RPC over the child's stdin/stdout (mcp/framing.py),
      or mcp/remote.py    over HTTP to a url service's remote server (children/remote.py)
    mcp/results.py        the result as text, back up the same way

An MCP C{tools/call} enters at C{http/streamable.py}, is answered by
C{front/server.py} and joins the same path at C{calls.py}.
"""

__version__ = "0.1.0"
