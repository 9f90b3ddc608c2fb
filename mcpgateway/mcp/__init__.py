"""
The MCP protocol, as the gateway speaks it to its children; nothing here
knows of sessions, services or HTTP.

  - L{spec}: protocol versions, C{_meta} keys and JSON-RPC error codes;
  - L{framing}: newline-delimited JSON framing with a line limit;
  - L{stdio}: JSON-RPC over a child's stdin/stdout (L{stdio.ChildProtocol});
  - L{results}: a C{tools/call} result as the text the REST API returns.
"""
