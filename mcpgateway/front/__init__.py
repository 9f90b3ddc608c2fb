"""
The MCP front door: the one MCP server the gateway shows its clients,
aggregating every service (or showing one), in either protocol era.  It
knows nothing of HTTP (L{mcpgateway.http.streamable} carries it).

  - L{server}: L{McpFront}, its sessions and the methods it answers;
  - L{catalog}: public names of tools and prompts, URIs, pagination;
  - L{client}: a legacy client's session and the requests it has in flight;
  - L{relay}: requests forwarded to the session's children, and what the
    children send back (progress, sampling, list changes);
  - L{errors}: JSON-RPC errors for the client.
"""
