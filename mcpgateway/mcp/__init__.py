"""
The MCP protocol, as the gateway speaks it to its children and remote
servers; nothing here knows of the gateway's sessions, services or its own
HTTP side.

  - L{spec}: protocol versions, C{_meta} keys and JSON-RPC error codes;
  - L{framing}: newline-delimited JSON framing with a line limit;
  - L{stdio}: JSON-RPC over a child's stdin/stdout (L{stdio.ChildProtocol});
  - L{remote}: JSON-RPC over HTTP to a remote server (L{remote.HttpPeer}),
    with L{legacysse} (the HTTP+SSE transport), L{httpheaders} (what a
    request carries) and L{httpbody} (bounded answers);
  - L{results}: a C{tools/call} result as the text the REST API returns.
"""
