"""
MCP authorization metadata: the gateway as an OAuth 2.0 protected resource
(RFC 9728), so that an MCP client following the specification finds where
to get a token.

C{GET /.well-known/oauth-protected-resource} describes the whole gateway
(C{resource} is its origin), C{/.well-known/oauth-protected-resource/mcp}
and C{/.well-known/oauth-protected-resource/services/<name>/mcp} describe one
MCP endpoint each (C{resource} is that endpoint's URL, as RFC 9728 section
3.3 requires of a document found from it).  Each names the configured
issuers that are URLs as C{authorization_servers}; with none, there is no
such document (404) and no challenge points to one.

A 401 then carries C{Bearer realm="mcpgateway",
resource_metadata="<URL of the document of the requested path>"} (RFC 9728
section 5.1), and C{error="invalid_token"} with an C{error_description} when
a bearer token was sent and refused (RFC 6750 section 3.1).  URLs start with
C{server.public_url} when it is set (behind a proxy that terminates TLS),
otherwise with the request's scheme and C{Host} (the local address when the
C{Host} is missing or not a host name).
"""

from __future__ import annotations

import re
from typing import Any

from twisted.web.iweb import IRequest

from mcpgateway.config import ServerConfig
from mcpgateway.policy.auth import CHALLENGES

__all__ = ["WELL_KNOWN", "ProtectedResource"]

#: The well-known path of RFC 9728 (the resource's own path follows it).
WELL_KNOWN = "/.well-known/oauth-protected-resource"
#: The paths whose own document is served: the MCP endpoints.
_MCP_PATH = re.compile(rb"/mcp|/services/[A-Za-z0-9_-]{1,64}/mcp")
_HOST = re.compile(r"(?:[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.?|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


def _quoted(text: str) -> str:
    """
    @return: C{text} as an RFC 9110 quoted string.
    """
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ProtectedResource:
    """
    The gateway's RFC 9728 metadata and C{WWW-Authenticate} challenges.

    @ivar authorization_servers: The issuers that are URLs (L{None}
        advertised when empty).
    @ivar scopes: Every issuer's C{scopes}, once each.
    """

    def __init__(self, server: ServerConfig) -> None:
        self.public_url = server.public_url
        self.authorization_servers = [
            entry.issuer for entry in server.issuers if entry.issuer.startswith(("https://", "http://"))
        ]
        self.scopes = list(dict.fromkeys(scope for entry in server.issuers for scope in entry.scopes))

    @property
    def advertised(self) -> bool:
        """
        Whether there is anything to advertise (an issuer that is a URL).
        """
        return bool(self.authorization_servers)

    def origin(self, request: IRequest) -> str:
        """
        @return: C{scheme://host[:port]} the client reached the gateway at.
        """
        if self.public_url:
            return self.public_url
        scheme = "https" if request.isSecure() else "http"
        host = (request.getHeader(b"host") or b"").decode("latin-1").strip()
        if not _HOST.fullmatch(host):
            address = request.getHost()
            name = str(getattr(address, "host", "localhost"))
            host = f"[{name}]" if ":" in name else name
            port = getattr(address, "port", None)
            if port is not None:
                host = f"{host}:{port}"
        return f"{scheme}://{host.lower()}"

    def metadata_url(self, request: IRequest) -> str:
        """
        @return: The URL of the document for the requested path: its own for
            an MCP endpoint, the gateway's for any other route.
        """
        path = request.path
        suffix = path.decode("ascii") if _MCP_PATH.fullmatch(path) else ""
        return f"{self.origin(request)}{WELL_KNOWN}{suffix}"

    def document(self, request: IRequest, path: str = "") -> dict[str, Any]:
        """
        @param path: The resource's path (C{""}: the gateway as a whole).
        @return: The RFC 9728 metadata of C{path}.
        """
        document: dict[str, Any] = {
            "resource": f"{self.origin(request)}{path}",
            "authorization_servers": list(self.authorization_servers),
            "bearer_methods_supported": ["header"],
        }
        if self.scopes:
            document["scopes_supported"] = list(self.scopes)
        return document

    def challenges(self, request: IRequest, error: str = "") -> list[bytes]:
        """
        @param error: Why a bearer token was refused (C{error_description}),
            or C{""} when none was sent (or only Basic credentials).
        @return: The C{WWW-Authenticate} values of a 401: Basic, and Bearer
            with C{resource_metadata} when issuers are advertised and
            C{error="invalid_token"} for a refused token.
        """
        basic, realm = CHALLENGES
        bearer = [realm.decode("ascii")]
        if self.advertised:
            bearer.append(f"resource_metadata={_quoted(self.metadata_url(request))}")
        if error:
            bearer.append('error="invalid_token"')
            bearer.append(f"error_description={_quoted(error)}")
        return [basic, ", ".join(bearer).encode("latin-1")]
