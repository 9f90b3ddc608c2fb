"""
Who may call: HTTP Basic with C{auth_user}/C{auth_password}, or
C{Authorization: Bearer <auth_token>}.  Credentials are compared as bytes in
constant time, so non-ASCII and digit-only credentials work.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from .config import ServerConfig

__all__ = ["CHALLENGES", "Authenticator"]

CHALLENGES = (b'Basic realm="mcpgateway", charset="UTF-8"', b'Bearer realm="mcpgateway"')


class Authenticator:
    """
    Checks an C{Authorization} header against the configured credentials.
    """

    def __init__(self, server: ServerConfig) -> None:
        """
        @param server: The C{server} section with the credentials.
        """
        self._user = server.auth_user.encode("utf-8")
        self._password = server.auth_password.encode("utf-8")
        self._token = server.auth_token.encode("utf-8")
        self._basic = bool(server.auth_user and server.auth_password)

    def check(self, header: bytes | None) -> bool:
        """
        @param header: The raw C{Authorization} header, or L{None}.
        @return: Whether it carries valid credentials.
        """
        if not header:
            return False
        scheme, _, value = header.strip().partition(b" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == b"bearer" and self._token:
            return hmac.compare_digest(value, self._token)
        if scheme == b"basic" and self._basic:
            try:
                decoded = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            user, colon, password = decoded.partition(b":")
            # Evaluate both comparisons: no early exit on a wrong user name.
            user_ok = hmac.compare_digest(user, self._user)
            password_ok = hmac.compare_digest(password, self._password)
            return bool(colon) and user_ok and password_ok
        return False
