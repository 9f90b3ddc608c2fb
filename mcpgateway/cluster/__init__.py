"""
Several gateway processes serving one session space.

  - L{directory}: the session directory in Redis (session -> owner's address);
  - L{placement}: where a session's calls are served (here, or forwarded to
    its owner), the directory kept up to date, the fleet's metrics;
  - L{workers}: C{server.workers} processes sharing one listening port.

Forwarding itself is HTTP, so it lives at the edge (L{mcpgateway.http.forward}).
"""
