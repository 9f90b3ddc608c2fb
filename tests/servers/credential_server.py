"""
A GitHub-like stdio MCP server that acts with the token in its environment:
the test of per-principal credentials runs it as the gateway would run the
real one.

C{credential_server.py [VARIABLE]} (default C{GITHUB_TOKEN}).  Tools:

  - C{whoami}: answers C{{"token": <the variable's value or null>, "pid": ...,
    "variables": [names of the variables whose value looks like a test
    token]}}, so a test sees which token the child holds, and that it holds
    no other one;
  - C{leak}: writes the token to stderr and answers a JSON-RPC error whose
    message holds it (a careless server's error);
  - C{crash}: writes the token to stderr and exits with status 3 (the
    gateway shows the stderr tail in its error).

A token with C{revoked} in it is refused at start, as a server that checks
its token first does: the token on stderr, exit status 3, no handshake.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _mcp import Request, RPCError, Server, Tool, log, main

#: Every test token starts with this, so a child can tell which it holds.
TOKEN_PREFIX = "tok-"


def serve(variable: str) -> None:
    """
    Be the server, acting with C{$variable}.
    """
    if "revoked" in os.environ.get(variable, ""):
        log(f"fatal: the API refused token {os.environ[variable]}")
        sys.stderr.flush()
        sys.exit(3)

    def whoami(request: Request, arguments: dict[str, Any]) -> str:
        held = sorted(name for name, value in os.environ.items() if TOKEN_PREFIX in value)
        return json.dumps({"token": os.environ.get(variable), "pid": os.getpid(), "variables": held})

    def leak(request: Request, arguments: dict[str, Any]) -> str:
        token = os.environ.get(variable, "")
        log(f"debug: calling the API with token {token}")
        raise RPCError(-32000, f"the API refused token {token}", {"token": token})

    def crash(request: Request, arguments: dict[str, Any]) -> str:
        log(f"fatal: token {os.environ.get(variable, '')} was revoked")
        sys.stderr.flush()
        os._exit(3)

    main(
        Server(
            "credentials",
            [
                Tool("whoami", "Say which token this server acts with.", whoami),
                Tool("leak", "Fail with the token in the error and on stderr.", leak),
                Tool("crash", "Write the token to stderr and exit.", crash),
            ],
        )
    )


if __name__ == "__main__":
    serve(sys.argv[1] if len(sys.argv) > 1 else "GITHUB_TOKEN")
