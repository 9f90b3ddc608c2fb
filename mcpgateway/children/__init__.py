"""
Supervision of the MCP servers the gateway runs as child processes.

  - L{child}: one running MCP server: spawn, handshake (era), requests, close;
  - L{service}: all children of one configured service: start with backoff,
    warm pool, tool cache, crash accounting;
  - L{tools}: the tool list a service declares, fetched once and shared;
  - L{sandbox}: how a child is started (limits, environment, privileges).
"""
