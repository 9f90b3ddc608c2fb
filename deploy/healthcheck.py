#!/usr/bin/env python3
"""
The container's health check: C{GET /health} of the gateway on this host.

Exit status 0 when it answers 200 (healthy), 1 otherwise: draining (503),
down, or too slow.  Standard library only, so it runs wherever the gateway's
interpreter does.  Over HTTPS when C{certs/server.pem} (the gateway's default
certificate, relative to the working directory) or C{MCP_HEALTH_SCHEME=https}
says so; the certificate is not verified (this is loopback, and the name in
it is the public one).  C{MCP_HEALTH_URL} overrides the whole URL.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request


def health_url(environ: dict[str, str]) -> str:
    """
    @return: The URL to check, from C{MCP_HEALTH_URL}, else C{MCP_PORT}
        (default 8080) and the scheme.
    """
    if environ.get("MCP_HEALTH_URL"):
        return environ["MCP_HEALTH_URL"]
    scheme = environ.get("MCP_HEALTH_SCHEME") or ("https" if os.path.exists("certs/server.pem") else "http")
    return f"{scheme}://127.0.0.1:{environ.get('MCP_PORT') or '8080'}/health"


def main() -> int:
    url = health_url(dict(os.environ))
    if not url.startswith(("http://", "https://")):
        print(f"healthcheck: not an http(s) URL: {url}", file=sys.stderr)
        return 1
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:  # noqa: S310 (checked above)
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
        error.close()
    except OSError as error:
        print(f"healthcheck: {url}: {error}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"healthcheck: {url}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
