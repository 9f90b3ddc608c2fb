"""
The edge: HTTP in, calls on the layers below, JSON (or SSE) out.

  - L{site}: the HTTP server (body, header and time limits, lingering close,
    security headers, JSON for malformed HTTP);
  - L{guard}: authentication and rate limits of a request, security events;
  - L{rest}: the REST API's routes (the SignalWire C{mcp-gateway} drop-in);
  - L{streamable}: MCP Streamable HTTP for the MCP front door
    (L{mcpgateway.front}), with its response streams in L{streams};
  - L{tls}: the server certificate and TLS options.
"""
