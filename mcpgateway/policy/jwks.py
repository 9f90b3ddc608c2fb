"""
An issuer's JSON Web Key Set (C{jwks_url} of L{mcpgateway.config.issuers}):
fetched, cached, refreshed, and the key for a token chosen by its C{kid} and
C{alg}.

The keys are fetched off the reactor with the L{Fetch} given (the gateway's
is L{mcpgateway.http.fetch.fetch}), at start and on first need, at most
L{MAX_JWKS_BYTES} within C{jwks_timeout}; they are used for
C{cache_seconds}, then fetched again by the next token that needs them.  A
token naming a C{kid} the set does not hold makes one fetch, but fetches of
one issuer are at least C{refresh_seconds} apart whatever the reason (a
flood of made-up C{kid}s, a JWKS that does not answer): a token that cannot
wait for the next one is refused.  When a fetch fails the keys known stay
in use (an outage of the identity provider does not log everyone out); a
token that needs a key the gateway never had is refused as C{keys
unavailable}, not C{unknown key}: the client is not guessing, the gateway
cannot tell.

Only keys that can verify one of the issuer's algorithms are kept: RSA keys
of at least 2048 bits, EC keys by curve, Ed25519, C{use} absent or C{sig},
never a symmetric key.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import jwt
from jwt.exceptions import PyJWTError
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from mcpgateway.config import IssuerConfig
from mcpgateway.config.issuers import MIN_RSA_BITS
from mcpgateway.lib.deferreds import Shared, observe
from mcpgateway.observe.logs import logger

__all__ = [
    "MAX_JWKS_BYTES",
    "MAX_JWKS_KEYS",
    "Fetch",
    "KeySet",
]

#: The JWT verifier's namespace (L{mcpgateway.policy.jwt}): log namespaces
#: are public and keep their names when modules move.
log = logger("mcpgateway.jwt")

#: The largest JWKS document read (a larger one is a failed fetch).
MAX_JWKS_BYTES = 256 * 1024
#: The most keys a JWKS may hold (more is a failed fetch).
MAX_JWKS_KEYS = 64

#: Which key types verify which algorithms (EC: by curve).
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


class Fetch(Protocol):
    """
    GET a URL off the reactor (L{mcpgateway.http.fetch.fetch}).
    """

    def __call__(self, url: str, timeout: float, max_bytes: int) -> Deferred[bytes]:
        """
        @return: Fires with the body of a 200 answer of at most
            C{max_bytes}, all of it within C{timeout} seconds, or fails.
        """


def _fits(jwk: dict[str, Any], alg: str) -> bool:
    """
    @return: Whether the JWK C{jwk} may verify C{alg}: its type and curve
        fit, and its own C{alg}, if given, is C{alg}.
    """
    if "alg" in jwk and jwk["alg"] != alg:
        return False
    kty = jwk.get("kty")
    if kty == "RSA":
        return alg[:2] in ("RS", "PS")
    if kty == "EC":
        return _EC_CURVES.get(alg) == jwk.get("crv")
    if kty == "OKP":
        return alg == "EdDSA" and jwk.get("crv") == "Ed25519"
    return False  # "oct" above all: a published symmetric key is nobody's secret


class KeySet:
    """
    The JWKS of one issuer, fetched and cached.

    @ivar config: The issuer (its C{jwks_url}, timeouts and algorithms).
    @ivar clock: Reads the time of the cache.
    @ivar keys: The usable keys of the JWKS, in its order: C{(kid or "", JWK)}.
    @ivar generation: Changes whenever the keys do (remembered tokens
        verified with older keys are verified again).
    @ivar fetched: When the JWKS was last read, or L{None}: never.
    @ivar fetches: JWKS fetches started.
    @ivar failing: Whether the last fetch failed (then no key is "unknown":
        it may be new).
    """

    def __init__(self, config: IssuerConfig, clock: IReactorTime, fetch: Fetch) -> None:
        """
        @param config: The issuer, with a C{jwks_url}.
        @param clock: Reads the time of the cache and of C{refresh_seconds}.
        @param fetch: GETs the JWKS (off the reactor).
        """
        self.config = config
        self.clock = clock
        self._fetch = fetch
        self.keys: list[tuple[str, dict[str, Any]]] = []
        self._prepared: dict[tuple[int, str], jwt.PyJWK] = {}
        self.generation = 0
        self.fetched: float | None = None
        self.fetches = 0
        self.failing = False
        self._attempted: float | None = None
        self._pending: Shared[None] | None = None
        self._work: Deferred[bytes] | None = None

    def fresh(self, now: float) -> bool:
        """
        @return: Whether the keys are not due for a refresh.
        """
        return self.fetched is not None and now - self.fetched < self.config.cache_seconds

    async def key(self, kid: str | None, alg: str) -> tuple[jwt.PyJWK | None, str]:
        """
        @return: The key to verify C{alg} with for C{kid} and C{""}, or
            L{None} and why not (C{unknown key}, C{keys unavailable}).
        """
        if not self.fresh(self.clock.seconds()):
            await self.refresh()
        key = self._find(kid, alg)
        if key is None and self.fetched is not None:
            await self.refresh()  # a new key: at most one fetch per refresh_seconds
            key = self._find(kid, alg)
        if key is not None:
            return key, ""
        return None, "keys unavailable" if self.fetched is None or self.failing else "unknown key"

    def _find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        fitting = [
            (index, jwk)
            for index, (known, jwk) in enumerate(self.keys)
            if (kid is None or known == kid) and _fits(jwk, alg)
        ]
        if len(fitting) != 1:  # none, or a token without kid and several keys
            return None
        index, jwk = fitting[0]
        prepared = self._prepared.get((index, alg))
        if prepared is None:
            try:
                prepared = self._prepared[(index, alg)] = jwt.PyJWK(jwk, alg)
            except PyJWTError:
                return None
        return prepared

    def refresh(self) -> Deferred[None]:
        """
        Fetch the JWKS, unless a fetch started less than C{refresh_seconds}
        ago; wait for one under way.

        @return: Fires (never fails) once the keys are as good as they get now.
        """
        if self._pending is not None:
            return self._pending.wait()
        now = self.clock.seconds()
        if self._attempted is not None and now - self._attempted < self.config.refresh_seconds:
            return succeed(None)
        self._attempted = now
        self.fetches += 1
        config = self.config
        work = self._fetch(config.jwks_url, config.jwks_timeout, MAX_JWKS_BYTES)
        self._work = work
        done = work.addCallbacks(self._loaded, self._failed).addErrback(self._bug)
        shared = observe(done)
        if not shared.done:
            self._pending = shared
            shared.wait().addBoth(self._settled)
        return shared.wait()

    def _settled(self, _: object) -> None:
        self._pending = None
        self._work = None

    def stop(self) -> None:
        """
        Cancel a fetch under way.
        """
        if self._work is not None:
            self._work.cancel()

    def _loaded(self, body: bytes) -> None:
        config = self.config
        try:
            keys = self._usable(json.loads(body))
        except (ValueError, UnicodeDecodeError) as error:
            self.failing = True
            log.warn(
                "issuer {issuer}: the JWKS at {url} is unusable ({error}); keeping the {count} keys known",
                issuer=config.name,
                url=config.jwks_url,
                error=str(error),
                count=len(self.keys),
            )
            return
        self.fetched = self.clock.seconds()
        self.failing = False
        if keys != self.keys:
            self.keys = keys
            self._prepared.clear()
            self.generation += 1
            log.info(
                "issuer {issuer}: {count} signing keys from {url} ({kids})",
                issuer=config.name,
                count=len(keys),
                url=config.jwks_url,
                kids=", ".join(kid or "-" for kid, _ in keys) or "none",
            )

    def _usable(self, document: Any) -> list[tuple[str, dict[str, Any]]]:
        """
        @return: The keys of a JWKS document that can verify one of the
            issuer's algorithms (RSA keys of at least 2048 bits; C{use}
            absent or C{sig}; never a symmetric key).
        @raise ValueError: For a document that is not a JWKS, or too large.
        """
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError('not a JWKS (an object with a "keys" list)')
        entries = document["keys"]
        if len(entries) > MAX_JWKS_KEYS:
            raise ValueError(f"{len(entries)} keys, more than {MAX_JWKS_KEYS}")
        keys: list[tuple[str, dict[str, Any]]] = []
        for jwk in entries:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                continue
            algs = [alg for alg in self.config.algorithms if _fits(jwk, alg)]
            if not algs:
                continue
            try:
                key = jwt.PyJWK(jwk, algs[0]).key
            except (PyJWTError, ValueError, TypeError, KeyError) as error:
                log.warn("issuer {issuer}: a JWKS key is skipped: {error}", issuer=self.config.name, error=str(error))
                continue
            if getattr(key, "key_size", MIN_RSA_BITS) < MIN_RSA_BITS and jwk.get("kty") == "RSA":
                log.warn("issuer {issuer}: a JWKS key is skipped: RSA under 2048 bits", issuer=self.config.name)
                continue
            kid = jwk.get("kid")
            keys.append((kid if isinstance(kid, str) else "", jwk))
        return keys

    def _bug(self, failure: Failure) -> None:
        log.failure("issuer {issuer}: reading the JWKS failed", failure, issuer=self.config.name)
        self.failing = True

    def _failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        self.failing = True
        config = self.config
        log.warn(
            "issuer {issuer}: the JWKS at {url} cannot be fetched ({error}); "
            "{what}, next try in {seconds:g} s at the earliest",
            issuer=config.name,
            url=config.jwks_url,
            error=failure.getErrorMessage() or failure.type.__name__,  # type: ignore[union-attr]
            what=(
                f"keeping the {len(self.keys)} keys known"
                if self.fetched is not None
                else "its tokens are refused (401) until it answers"
            ),
            seconds=config.refresh_seconds,
        )
