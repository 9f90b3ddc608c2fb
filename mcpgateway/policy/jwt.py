"""
JWT / OIDC principals: C{Authorization: Bearer <JWT>} verified against the
issuers of C{server.issuers} (L{mcpgateway.config.issuers}).

A token is taken apart without trusting it first, and refused as early and
as cheaply as possible: its C{iss} picks the issuer (compared exactly), its
C{alg} must be one the issuer allows (never C{none}; HMAC only with a shared
secret, so a public key is never an HMAC secret), C{exp} is required and,
with C{nbf} and C{iat}, checked against the gateway's clock with the
issuer's C{leeway}, one of its C{aud} values must be accepted.  Only then is
a key looked up and the signature checked (PyJWT, which checks C{iss} and
C{aud} once more).  The principal is C{<issuer name>:<name claim>}, its
roles the strings of the roles claims, and its role C{admin} when one of
them is an admin role (C{agent} otherwise).

Keys of a C{jwks_url} are fetched and cached by L{mcpgateway.policy.jwks};
a token refused because the gateway could not get its issuer's keys
(C{keys unavailable}) gets L{Verdict.counted} false: the client is not
guessing, the gateway cannot tell.

Checking a signature costs 0.1-0.3 ms (RS256, ES256 on one core), so a
verified token is remembered (L{_VERIFIED_SIZE} of them, by sha256) until
it expires, its issuer's keys change, or they are due for a refresh: an
agent sending the same token with every request pays for it once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.exceptions import (
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidKeyError,
    InvalidSignatureError,
    PyJWTError,
)
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from mcpgateway.config import IssuerConfig
from mcpgateway.config.issuers import load_public_key
from mcpgateway.policy.auth import ADMIN, AGENT, Principal
from mcpgateway.policy.jwks import Fetch, KeySet

__all__ = [
    "REASONS",
    "Tokens",
    "Verdict",
]

#: The longest name claim (characters); the principal is C{<issuer>:<claim>}.
MAX_NAME_CLAIM = 200
#: Roles kept of one token (the first ones), and the longest role kept.
MAX_ROLES = 256
MAX_ROLE = 256
#: Verified tokens remembered (least recently used forgotten first).
_VERIFIED_SIZE = 1024

#: Why a token is refused: the C{reason} of L{Verdict} and of the
#: C{auth_failure} security event, and the C{error_description} of the
#: C{WWW-Authenticate} challenge.
REASONS = (
    "malformed",
    "unknown issuer",
    "algorithm not allowed",
    "no expiry",
    "expired",
    "not yet valid",
    "wrong audience",
    "unknown key",
    "keys unavailable",
    "bad signature",
    "no name",
)

#: PyJWT with the time checks off (done here, against the gateway's clock),
#: C{sub} left to the name claim's check (a number is a name) and short
#: keys refused.
_OPTIONS: Any = {
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_sub": False,
    "enforce_minimum_key_length": True,
}


#: PyJWT's refusals, as reasons (any other one is C{malformed}).
_REFUSALS: tuple[tuple[type[PyJWTError], str], ...] = (
    (InvalidSignatureError, "bad signature"),
    (InvalidAudienceError, "wrong audience"),
    (InvalidIssuerError, "unknown issuer"),
    (InvalidAlgorithmError, "algorithm not allowed"),
    (InvalidKeyError, "unknown key"),
)


@dataclass(frozen=True)
class Verdict:
    """
    What a token proved.

    @ivar principal: Who it is, or L{None}: refused.
    @ivar reason: Why it was refused (one of L{REASONS}), or C{""}.
    @ivar issuer: The name of the issuer it claims, if configured, or C{""}.
    @ivar counted: Whether the refusal counts against the client's
        C{auth_failure} budget: not when the gateway could not get the keys.
    """

    principal: Principal | None
    reason: str = ""
    issuer: str = ""
    counted: bool = True


def _segment(data: bytes) -> Any:
    return json.loads(base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4)))


def _parse(token: bytes) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """
    @return: The header and the claims, unverified, or L{None} if malformed.
    """
    head, body, _ = token.split(b".")
    try:
        header, claims = _segment(head), _segment(body)
    except (binascii.Error, ValueError):
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict) or "b64" in header:
        return None
    return header, claims


def _time(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _claim(claims: dict[str, Any], path: str) -> Any:
    """
    @return: The value at a dotted C{path} (C{realm_access.roles}), or L{None}.
    """
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _roles(claims: dict[str, Any], paths: Sequence[str]) -> tuple[str, ...]:
    """
    @return: The strings of the roles claims (lists of strings, or
        space-separated strings like C{scope}), in order, once each.
    """
    found: dict[str, None] = {}
    for path in paths:
        value = _claim(claims, path)
        items: Iterable[Any] = value.split() if isinstance(value, str) else value if isinstance(value, list) else ()
        for item in items:
            if isinstance(item, str) and item and len(item) <= MAX_ROLE and len(found) < MAX_ROLES:
                found.setdefault(item, None)
    return tuple(found)


def _name(claims: dict[str, Any], path: str) -> str | None:
    value = _claim(claims, path)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CLAIM:
        return None
    if not value.isprintable() or any(char.isspace() for char in value):
        return None
    return value


class _Issuer:
    """
    One configured issuer: its checks, and its keys (static, or its JWKS,
    a L{KeySet}).

    @ivar jwks: Its JWKS, or L{None}: its keys are static (C{key}, C{secret}).
    """

    def __init__(self, config: IssuerConfig, clock: IReactorTime, fetch: Fetch) -> None:
        self.config = config
        self.algorithms = frozenset(config.algorithms)
        self.audience = frozenset(config.audience)
        self.admin_roles = frozenset(config.admin_roles)
        self._static: Any = None
        if config.key:
            self._static = load_public_key(config.key)
        elif config.secret:
            self._static = config.secret.encode("utf-8")
        self.jwks = KeySet(config, clock, fetch) if self._static is None else None

    # -- checks before any key is looked up ----------------------------------------

    def check_claims(self, claims: dict[str, Any], now: float) -> str:
        """
        @return: Why the unverified C{claims} are refused, or C{""}.
        """
        leeway = self.config.leeway
        exp = _time(claims.get("exp"))
        if exp is None:
            return "no expiry"
        if exp <= now - leeway:
            return "expired"
        for name in ("nbf", "iat"):
            if name in claims:
                when = _time(claims[name])
                if when is None:
                    return "malformed"
                if when > now + leeway:
                    return "not yet valid"
        audience = claims.get("aud")
        values = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
        if not any(isinstance(value, str) and value in self.audience for value in values):
            return "wrong audience"
        return ""

    # -- keys ------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """
        Changes whenever its keys do (remembered tokens verified with older
        keys are verified again).
        """
        return 0 if self.jwks is None else self.jwks.generation

    def fresh(self, now: float) -> bool:
        """
        @return: Whether its keys are not due for a refresh.
        """
        return self.jwks is None or self.jwks.fresh(now)

    async def key(self, kid: str | None, alg: str) -> tuple[Any, str]:
        """
        @return: The key to verify C{alg} with for C{kid} and C{""}, or
            L{None} and why not (C{unknown key}, C{keys unavailable}).
        """
        if self.jwks is None:
            return self._static, ""
        return await self.jwks.key(kid, alg)

    # -- the principal ------------------------------------------------------------------

    def principal(self, claims: dict[str, Any]) -> Principal | None:
        """
        @return: Who verified C{claims} name, or L{None} without a usable name.
        """
        name = _name(claims, self.config.name_claim)
        if name is None:
            return None
        roles = _roles(claims, self.config.roles_claim)
        role = ADMIN if self.admin_roles.intersection(roles) else AGENT
        return Principal(f"{self.config.name}:{name}", role, roles)


class Tokens:
    """
    Verifies JWTs against the configured issuers.

    @ivar issuers: By name.
    """

    def __init__(self, issuers: Sequence[IssuerConfig], clock: IReactorTime, fetch: Fetch) -> None:
        """
        @param issuers: C{server.issuers}.
        @param clock: Reads the time of C{exp}, C{nbf}, C{iat} and of the JWKS cache.
        @param fetch: GETs a JWKS (off the reactor).
        """
        self.clock = clock
        self.issuers = {config.name: _Issuer(config, clock, fetch) for config in issuers}
        self._by_iss = {issuer.config.issuer: issuer for issuer in self.issuers.values()}
        self._verified: OrderedDict[bytes, tuple[Principal, float, _Issuer, int]] = OrderedDict()

    def start(self) -> None:
        """
        Fetch every JWKS now (at the gateway's start), not on the first token.
        """
        for issuer in self.issuers.values():
            if issuer.jwks is not None:
                issuer.jwks.refresh()

    def stop(self) -> None:
        """
        Cancel the fetches under way.
        """
        for issuer in self.issuers.values():
            if issuer.jwks is not None:
                issuer.jwks.stop()

    def verify(self, token: bytes) -> Deferred[Verdict]:
        """
        @param token: What followed C{Bearer}, in the JWS compact form
            (L{mcpgateway.policy.auth.looks_like_jwt}).
        @return: Fires with the L{Verdict} (at once unless a JWKS must be
            fetched first); never fails for a bad token or an unreachable JWKS.
        """
        digest = hashlib.sha256(token).digest()
        now = self.clock.seconds()
        known = self._verified.get(digest)
        if known is not None:
            principal, until, issuer, generation = known
            if now < until and generation == issuer.generation and issuer.fresh(now):
                self._verified.move_to_end(digest)
                return succeed(Verdict(principal, issuer=issuer.config.name))
            del self._verified[digest]
        return Deferred.fromCoroutine(self._verify(token, digest))

    async def _verify(self, token: bytes, digest: bytes) -> Verdict:
        parsed = _parse(token)
        if parsed is None:
            return Verdict(None, "malformed")
        header, claims = parsed
        iss = claims.get("iss")
        issuer = self._by_iss.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            return Verdict(None, "unknown issuer")
        name = issuer.config.name
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            return Verdict(None, "algorithm not allowed", name)
        if kid is not None and not isinstance(kid, str):
            return Verdict(None, "malformed", name)
        reason = issuer.check_claims(claims, self.clock.seconds())
        if reason:
            return Verdict(None, reason, name)
        key, reason = await issuer.key(kid, alg)
        if key is None:
            return Verdict(None, reason, name, counted=reason != "keys unavailable")
        generation = issuer.generation
        try:
            verified = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=list(issuer.audience),
                issuer=issuer.config.issuer,
                options=_OPTIONS,
            )
        except PyJWTError as error:
            reason = next((why for kind, why in _REFUSALS if isinstance(error, kind)), "malformed")
            return Verdict(None, reason, name)
        principal = issuer.principal(verified)
        if principal is None:
            return Verdict(None, "no name", name)
        until = float(verified["exp"]) + issuer.config.leeway
        self._verified[digest] = (principal, until, issuer, generation)
        if len(self._verified) > _VERIFIED_SIZE:
            self._verified.popitem(last=False)
        return Verdict(principal, issuer=name)
