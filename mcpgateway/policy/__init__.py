"""
Who may do what, and how often: decisions taken before a request reaches a
session or a child.

  - L{auth}: principals and their credentials (Basic, Bearer);
  - L{ratelimit}: rate limits per principal and route group (C{limits}).

Per-tool policy, budgets and audit belong here too: each is asked by the
one call path (L{mcpgateway.calls}) and knows nothing of HTTP or children.
"""
