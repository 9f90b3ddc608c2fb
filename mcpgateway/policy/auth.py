"""
Who may call, and as whom.

Credentials come from the C{server} section: the seeds' single
C{auth_user}/C{auth_password} and C{auth_token} (an admin principal), and a
list of C{principals}, each with a role and a password hash and/or a token
hash, so several agents or teams share one gateway without seeing each
other's sessions.

Everything is compared as bytes in constant time, so non-ASCII and
digit-only credentials work.  Password hashes are scrypt, verified in a
thread (never on the reactor), at most L{VERIFY_CONCURRENCY} at a time, and
remembered for a while, so only the first request of a client pays for the
hash.  L{Authenticator.costly} tells the caller beforehand that a header
needs such a verification, so that the attempt can be counted against the
client's failure budget I{before} the work is done (a burst of guesses
then costs at most that budget in hashing).  An unknown user name costs the
same hash as a known one, so timing does not tell which names exist.

Guessable and unguessable credentials
=====================================

A password, and a bearer token shorter than L{STRONG_TOKEN_BYTES}, can be
guessed: the caller refuses such a credential without checking it once the
client's failure budget is used up, so that a right guess gains nothing.
A longer bearer token cannot (C{python -m mcpgateway.auth token} makes 43
characters): L{Authenticator.recall} checks it completely, at any rate, so
a valid token is never refused because of someone else's failures.

A guessable credential is remembered with the client addresses it was
verified from, and L{Authenticator.recall} admits it again I{from those
addresses only}, without a hash.  Remembering it from every address would
make the memory an oracle: a locked-out guesser would be refused for every
wrong guess but admitted for the right one, at any rate.

C{python -m mcpgateway.auth password} and C{python -m mcpgateway.auth token}
print the hash to put in the configuration.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import os
import re
import secrets
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, DeferredSemaphore, succeed
from twisted.internet.threads import deferToThread

from mcpgateway.config import PrincipalConfig, ServerConfig
from mcpgateway.lib.deferreds import Shared, observe

if TYPE_CHECKING:
    from mcpgateway.policy.jwt import Tokens

__all__ = [
    "ADMIN",
    "AGENT",
    "CHALLENGES",
    "STRONG_TOKEN_BYTES",
    "Authenticator",
    "Principal",
    "hash_password",
    "hash_token",
    "looks_like_jwt",
]

CHALLENGES = (b'Basic realm="mcpgateway", charset="UTF-8"', b'Bearer realm="mcpgateway"')
ADMIN = "admin"
AGENT = "agent"
#: Verified guessable credentials remembered (least recently used forgotten first).
_CACHE_SIZE = 1024
#: (client address, credential) pairs remembered, for L{Authenticator.recall}.
_SOURCES_SIZE = 8 * _CACHE_SIZE
#: A bearer token at least this long (bytes) is taken as unguessable.
STRONG_TOKEN_BYTES = 32
#: Password hashes verified at once (each takes a thread and ~16 MiB).
VERIFY_CONCURRENCY = 2
#: Verified for an unknown user name, so it costs what a known one does.
_DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


@dataclass(frozen=True)
class Principal:
    """
    An authenticated caller.

    @ivar name: Who it is (owns the sessions it creates).  A JWT's
        principal is C{<issuer name>:<claim>}: the colon is never in the name
        of a configured principal, so the two never meet by accident.
    @ivar role: C{"admin"} (sees every session) or C{"agent"} (only its own).
    @ivar roles: The roles its credential carries (a JWT's roles claim);
        empty for configured principals.
    """

    name: str
    role: str
    roles: tuple[str, ...] = ()

    @property
    def admin(self) -> bool:
        """
        @return: Whether this principal may see and close every session.
        """
        return self.role == ADMIN


def hash_password(password: str, *, n: int = 2**14, r: int = 8, p: int = 1) -> str:
    """
    @param password: The clear password.
    @return: C{scrypt$n$r$p$salt$hash} (base64), for C{principals[].password_hash}.
    """
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)
    encode = base64.b64encode
    return f"scrypt${n}${r}${p}${encode(salt).decode()}${encode(digest).decode()}"


def hash_token(token: str) -> str:
    """
    @param token: A bearer token (high entropy: a fast hash is enough).
    @return: C{sha256$<hex>}, for C{principals[].token_hash}.
    """
    return "sha256$" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def _verify_password(encoded: str, password: bytes) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password, salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)


class Authenticator:
    """
    Turns an C{Authorization} header into a L{Principal}, or L{None}.
    """

    def __init__(self, server: ServerConfig, tokens: Tokens | None = None) -> None:
        """
        @param server: The C{server} section with the credentials.
        @param tokens: Verifies the JWTs of C{server.issuers}, or L{None}:
            no JWTs (every bearer token is a static one).
        """
        #: JWT verification (L{mcpgateway.policy.jwt}), or L{None}.
        self.tokens = tokens
        self._user = server.auth_user.encode("utf-8")
        self._password = server.auth_password.encode("utf-8")
        self._token = server.auth_token.encode("utf-8")
        self._basic = bool(server.auth_user and server.auth_password)
        self._seed = Principal(server.auth_user or "admin", ADMIN)
        self._by_name: dict[bytes, PrincipalConfig] = {p.name.encode("utf-8"): p for p in server.principals}
        self._by_token: dict[str, PrincipalConfig] = {
            p.token_hash.split("$", 1)[1]: p for p in server.principals if p.token_hash
        }
        self._verified: OrderedDict[bytes, Principal] = OrderedDict()
        self._sources: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._pending: dict[bytes, Shared[Principal | None]] = {}
        self._slots = DeferredSemaphore(VERIFY_CONCURRENCY)

    def check(self, header: bytes | None) -> bool:
        """
        Synchronous check of the seed credentials only (no principals list).

        @param header: The raw C{Authorization} header, or L{None}.
        @return: Whether it carries the seeds' valid credentials.
        """
        return self._seed_principal(*_parse(header)) is not None

    def authenticate(self, header: bytes | None, address: str | None = None) -> Deferred[Principal | None]:
        """
        @param header: The raw C{Authorization} header, or L{None}.
        @param address: The client's address: a guessable credential found
            valid is remembered with it (see L{recall}).
        @return: Fires with the L{Principal}, or L{None} for missing or
            wrong credentials.
        """
        scheme, value = _parse(header)
        key = _key(scheme, value)
        principal = self._seed_principal(scheme, value)
        if principal is None and scheme == b"bearer":
            principal = self._token_principal(value)
        if principal is not None:
            if not _strong(scheme, value):
                self._remember(key, principal, address)
            return succeed(principal)
        if scheme != b"basic" or not self._by_name:
            return succeed(None)
        user, password = _basic(value)
        if user is None or password is None:
            return succeed(None)
        cached = self._verified.get(key)
        if cached is not None:
            self._remember(key, cached, address)
            return succeed(cached)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._verify(key, user, password)

        def verified(principal: Principal | None) -> Principal | None:
            if principal is not None:
                self._remember(key, principal, address)
            return principal

        return pending.wait().addCallback(verified)

    def recall(self, header: bytes | None, address: str) -> Principal | None:
        """
        Who C{header} is, if that can be told at no cost and without
        helping a guesser: a bearer token of at least L{STRONG_TOKEN_BYTES}
        (checked in full: a constant-time comparison and a sha256 lookup),
        or a guessable credential that L{authenticate} verified from
        C{address} before and still remembers.  Never verifies a password
        hash.

        @param header: The raw C{Authorization} header, or L{None}.
        @param address: The client's address.
        @return: The L{Principal}, or L{None}: wrong if L{guessable} says
            C{False}, otherwise not known yet (L{authenticate} tells).
        """
        scheme, value = _parse(header)
        if _strong(scheme, value):
            return self._seed_principal(scheme, value) or self._token_principal(value)
        key = _key(scheme, value)
        principal = self._verified.get(key)
        source = (address, key)
        if principal is None or source not in self._sources:
            return None
        self._verified.move_to_end(key)
        self._sources.move_to_end(source)
        return principal

    def guessable(self, header: bytes | None) -> bool:
        """
        Whether C{header} carries something a guesser could find: a
        password, a short bearer token, or no valid credential at all.  Only
        a bearer token of at least L{STRONG_TOKEN_BYTES} is not, and
        L{recall} decides it.

        @param header: The raw C{Authorization} header, or L{None}.
        """
        return not _strong(*_parse(header))

    def jwt(self, header: bytes | None) -> bytes | None:
        """
        The JWT of a C{Bearer} header, for L{tokens} to verify: with issuers
        configured, a bearer token of at least L{STRONG_TOKEN_BYTES} in the
        JWS compact form.  Ask L{recall} first: a static token is a static
        token, whatever it looks like.

        @param header: The raw C{Authorization} header, or L{None}.
        @return: The token, or L{None}.
        """
        if self.tokens is None:
            return None
        scheme, value = _parse(header)
        return value if _strong(scheme, value) and looks_like_jwt(value) else None

    def bearer(self, header: bytes | None) -> bool:
        """
        @param header: The raw C{Authorization} header, or L{None}.
        @return: Whether it carries a C{Bearer} credential (RFC 6750).
        """
        return _parse(header)[0] == b"bearer"

    def user_name(self, header: bytes | None) -> bytes | None:
        """
        @param header: The raw C{Authorization} header, or L{None}.
        @return: The user name of well-formed Basic credentials (any bytes,
            known or not), or L{None}.
        """
        scheme, value = _parse(header)
        if scheme != b"basic":
            return None
        user, password = _basic(value)
        return None if password is None else user

    def costly(self, header: bytes | None) -> bool:
        """
        Whether L{authenticate} would have to verify a password hash for
        C{header} (Basic credentials that are neither the seed's nor
        remembered nor being verified already, while principals are
        configured).

        @param header: The raw C{Authorization} header, or L{None}.
        """
        if not self._by_name:
            return False
        scheme, value = _parse(header)
        if scheme != b"basic" or self._seed_principal(scheme, value) is not None:
            return False
        user, password = _basic(value)
        if user is None or password is None:
            return False
        key = _key(scheme, value)
        return key not in self._verified and key not in self._pending

    def _verify(self, key: bytes, user: bytes, password: bytes) -> Shared[Principal | None]:
        """
        Verify a password hash in a thread; the same credential sent again
        meanwhile waits for this verification instead of starting another
        (L{costly} says so), so a fleet of clients starting at once costs
        one hash and one attempt.
        """
        entry = self._by_name.get(user)
        found = Principal(entry.name, entry.role) if entry is not None and entry.password_hash else None
        encoded = entry.password_hash if entry is not None and found is not None else _DUMMY_HASH

        def verified(ok: bool) -> Principal | None:
            return found if ok else None

        work = self._slots.run(deferToThread, _verify_password, encoded, password).addCallback(verified)
        shared = observe(work)
        if not shared.done:
            self._pending[key] = shared
            # The first waiter, so the next request of this credential
            # finds it remembered or verifies it again, even after an error.
            shared.wait().addBoth(lambda _: self._pending.pop(key, None))
        return shared

    def _token_principal(self, value: bytes) -> Principal | None:
        entry = self._by_token.get(hashlib.sha256(value).hexdigest())
        return Principal(entry.name, entry.role) if entry is not None else None

    def _remember(self, key: bytes, principal: Principal, address: str | None) -> None:
        """
        Remember a guessable credential found valid, and the address it came from.
        """
        self._verified[key] = principal
        self._verified.move_to_end(key)
        if len(self._verified) > _CACHE_SIZE:
            self._verified.popitem(last=False)
        if address is not None:
            self._sources[(address, key)] = None
            self._sources.move_to_end((address, key))
            if len(self._sources) > _SOURCES_SIZE:
                self._sources.popitem(last=False)

    def _seed_principal(self, scheme: bytes, value: bytes) -> Principal | None:
        if scheme == b"bearer" and self._token:
            return self._seed if hmac.compare_digest(value, self._token) else None
        if scheme == b"basic" and self._basic:
            user, password = _basic(value)
            if user is None or password is None:
                return None
            # Evaluate both comparisons: no early exit on a wrong user name.
            user_ok = hmac.compare_digest(user, self._user)
            password_ok = hmac.compare_digest(password, self._password)
            return self._seed if user_ok and password_ok else None
        return None


_JWS = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def looks_like_jwt(token: bytes) -> bool:
    """
    @return: Whether C{token} has the JWS compact form: three base64url
        segments, the last one possibly empty (an unsigned token, which is
        then refused as such rather than taken for a static token).
    """
    return _JWS.fullmatch(token) is not None


def _strong(scheme: bytes, value: bytes) -> bool:
    return scheme == b"bearer" and len(value) >= STRONG_TOKEN_BYTES


def _key(scheme: bytes, value: bytes) -> bytes:
    """
    @return: What a credential is remembered by (its scheme is part of it).
    """
    return hashlib.sha256(scheme + b" " + value).digest()


def _parse(header: bytes | None) -> tuple[bytes, bytes]:
    if not header:
        return b"", b""
    scheme, _, value = header.strip().partition(b" ")
    return scheme.lower(), value.strip()


def _basic(value: bytes) -> tuple[bytes | None, bytes | None]:
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None, None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None, None
    return user, password


def main(argv: list[str] | None = None) -> None:
    """
    C{python -m mcpgateway.auth password|token}: print a hash for the configuration.

    @param argv: C{["password"]} (asks for it) or C{["token"]} (makes one).
    """
    args = sys.argv[1:] if argv is None else argv
    if args == ["password"]:
        password = getpass.getpass("password: ")
        print(hash_password(password))
    elif args == ["token"]:
        token = secrets.token_urlsafe(32)
        print(f"token (give to the client): {token}")
        print(f"token_hash (put in the configuration): {hash_token(token)}")
    else:
        raise SystemExit("usage: python -m mcpgateway.auth password|token")


if __name__ == "__main__":
    main()
