"""
Who may do what, and how often: decisions taken before a request reaches a
session or a child.

  - L{auth}: principals and their credentials (Basic, Bearer);
  - L{jwt}: JWT bearer tokens verified against the configured issuers,
    and the principals they name;
  - L{jwks}: an issuer's JSON Web Key Set, fetched and cached;
  - L{ratelimit}: rate limits per principal and route group (C{limits});
  - L{storage}: where counters live, reached without blocking the reactor;
  - L{rules}: the per-tool policy (who may see and call which tool, with
    which arguments);
  - L{budgets}: calls per principal and service per window;
  - L{matching}: what rules and budgets match a call on.

Rules and budgets are L{mcpgateway.calls.CallPolicy}s: each is asked by the
one call path (L{mcpgateway.calls}) and knows nothing of HTTP or children.
"""
