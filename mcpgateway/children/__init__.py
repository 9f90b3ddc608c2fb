"""
Supervision of the MCP servers the gateway runs as child processes.

  - L{child}: one running MCP server: spawn, handshake (era), requests, close;
  - L{service}: all children of one configured service: start, state, stop;
  - L{backoff}: a service's start failures and how long it waits after them;
  - L{pool}: a service's warm pool (children started ahead of need);
  - L{ends}: how a service's children ended (crashes, sandbox-limit stops);
  - L{workdirs}: a service's working and cache directories;
  - L{tools}: the tool list a service declares, fetched once and shared;
  - L{remote}: a C{url} service's sessions and HTTP client;
  - L{sandbox}: how a child is started (limits, environment, privileges).
"""
