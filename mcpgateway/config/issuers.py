"""
C{server.issuers}: the identity providers whose JWTs the gateway accepts as
C{Authorization: Bearer <JWT>}, and C{server.public_url}.

Each issuer is keyed by a short name that prefixes the names of its
principals (C{"corp"}: C{corp:alice@example.com}), and gives its keys in one
of three ways: C{jwks_url} (fetched and cached by
L{mcpgateway.policy.jwks}), C{key} (one PEM public key or certificate) or
C{secret} (a shared HMAC secret).  Which signature algorithms a token may
use follows from that: asymmetric ones for keys, HMAC ones for a secret,
never C{none}, so a public key can never be used as an HMAC secret.
Everything that can be checked here is (PEM keys are loaded, secrets
measured), so a broken issuer stops the start with one line naming the key
path.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from mcpgateway.config.values import (
    ConfigError,
    Reader,
    kind,
    non_negative,
    number,
    positive,
    section,
    string,
    string_list,
)

__all__ = [
    "ASYMMETRIC",
    "HMAC",
    "ISSUER_NAME",
    "IssuerConfig",
    "algorithms_of_key",
    "is_loopback_host",
    "issuers_from_config",
    "load_public_key",
    "public_url",
]

#: An issuer's name: the prefix of its principals' names (C{<name>:<claim>}).
ISSUER_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
#: The asymmetric algorithms a JWKS or a PEM key may verify.
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
#: The HMAC algorithms a shared C{secret} may verify, and its least length in bytes for each.
HMAC = {"HS256": 32, "HS384": 48, "HS512": 64}
#: Least RSA key size (bits), as RFC 7518 section 3.3 requires.
MIN_RSA_BITS = 2048
#: Greatest C{leeway}: a clock skew larger than this is a broken clock.
MAX_LEEWAY = 300.0
_EC_ALGORITHM = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_CLAIM_PATH = re.compile(r"[^.\s]+(\.[^.\s]+)*")


@dataclass(frozen=True)
class IssuerConfig:
    """
    One entry of C{server.issuers}.

    @ivar name: Its key in C{server.issuers}; its principals are C{<name>:<claim>}.
    @ivar issuer: The C{iss} its tokens carry (compared exactly).
    @ivar audience: The C{aud} values accepted (a token needs one of them).
    @ivar jwks_url: Where its JSON Web Key Set is, or C{""}.
    @ivar key: One PEM public key or certificate, or C{""}.
    @ivar secret: A shared HMAC secret, or C{""}.
    @ivar algorithms: The C{alg} values accepted.
    @ivar leeway: Seconds of clock skew allowed for C{exp}, C{nbf} and C{iat}.
    @ivar name_claim: The claim (a dotted path) naming the principal.
    @ivar roles_claim: The claims (dotted paths) holding its roles: lists of
        strings, or space-separated strings (C{scope}).
    @ivar admin_roles: Roles that make the principal an admin.
    @ivar scopes: Advertised as C{scopes_supported} (RFC 9728).
    @ivar cache_seconds: How long a fetched JWKS is used before it is fetched again.
    @ivar refresh_seconds: The least time between two fetches of the JWKS
        (a token with an unknown C{kid}, a failed fetch).
    @ivar jwks_timeout: Seconds a JWKS fetch may take, all of it.
    """

    name: str
    issuer: str
    audience: tuple[str, ...]
    jwks_url: str = ""
    key: str = ""
    secret: str = ""
    algorithms: tuple[str, ...] = ()
    leeway: float = 30.0
    name_claim: str = "sub"
    roles_claim: tuple[str, ...] = ("roles",)
    admin_roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    cache_seconds: float = 600.0
    refresh_seconds: float = 30.0
    jwks_timeout: float = 5.0


PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


def load_public_key(pem: str) -> PublicKey:
    """
    @param pem: A PEM public key (C{BEGIN PUBLIC KEY}) or X.509 certificate.
    @return: The key.
    @raise ValueError: For anything else (a private key included), or a key
        of an unsupported type or too short.
    """
    data = pem.strip().encode("ascii", "replace")
    if b"PRIVATE KEY-----" in data:
        raise ValueError("this is a private key: give the issuer's public key (or certificate) only")
    if b"-----BEGIN CERTIFICATE-----" in data:
        key: Any = x509.load_pem_x509_certificate(data).public_key()
    elif b"-----BEGIN" in data:
        key = load_pem_public_key(data)
    else:
        raise ValueError("expected a PEM public key or certificate (-----BEGIN PUBLIC KEY----- ...)")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ValueError(f"an RSA key of {key.key_size} bits is too short (at least {MIN_RSA_BITS})")
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
        raise ValueError(f"unsupported key type {type(key).__name__} (RSA, EC P-256/384/521 or Ed25519)")
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name not in _EC_ALGORITHM:
        raise ValueError(f"unsupported curve {key.curve.name} (P-256, P-384 or P-521)")
    return key


def algorithms_of_key(key: PublicKey) -> tuple[str, ...]:
    """
    @return: The algorithms C{key} can verify.
    """
    if isinstance(key, rsa.RSAPublicKey):
        return tuple(alg for alg in ASYMMETRIC if alg[:2] in ("RS", "PS"))
    if isinstance(key, ec.EllipticCurvePublicKey):
        return (_EC_ALGORITHM[key.curve.name],)
    return ("EdDSA",)


def is_loopback_host(host: str) -> bool:
    """
    @return: Whether C{host} (a URL's host name) is C{localhost} or a loopback address.
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url(value: Any, path: str, environ: Mapping[str, str]) -> tuple[str, SplitResult]:
    """
    @return: An C{http(s)://} URL with a host, and its parts.
    """
    url = string(value, path, environ).strip()
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise ConfigError(f"{path}: not a URL: {url!r}") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"{path}: expected an https:// URL, got {url!r}")
    return url, parts


def _jwks_url(value: Any, path: str, environ: Mapping[str, str]) -> str:
    url, parts = _url(value, path, environ)
    host = parts.hostname or ""
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ConfigError(
            f"{path}: plain http is refused for {host} (whoever is on the path could sign tokens); "
            "use https (http only for a loopback address)"
        )
    return url


def public_url(value: Any, path: str, environ: Mapping[str, str]) -> str:
    """
    Read C{server.public_url}: C{scheme://host[:port]}, without a path.

    @return: The URL without a trailing slash, its host in lower case; or C{""}.
    """
    if not string(value, path, environ).strip():
        return ""
    url, parts = _url(value, path, environ)
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc or '"' in url:
        raise ConfigError(
            f"{path}: expected https://host[:port] without a path, query or user name, got {url!r} "
            "(the gateway's routes are at the root of its origin)"
        )
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _claim(value: Any, path: str, environ: Mapping[str, str]) -> str:
    claim = string(value, path, environ).strip()
    if not _CLAIM_PATH.fullmatch(claim):
        raise ConfigError(f"{path}: expected a claim name or a dotted path (realm_access.roles), got {claim!r}")
    return claim


def _claims(value: Any, path: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    claims = string_list(value, path, environ)
    return tuple(_claim(claim, f"{path}[{index}]", environ) for index, claim in enumerate(claims))


def _words(what: str) -> Reader:
    def read(value: Any, path: str, environ: Mapping[str, str]) -> tuple[str, ...]:
        words = string_list(value, path, environ)
        for index, word in enumerate(words):
            if not word or any(char.isspace() for char in word):
                raise ConfigError(f"{path}[{index}]: {what} is a non-empty string without spaces, got {word!r}")
        return words

    return read


def _audience(value: Any, path: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    audience = string_list(value, path, environ)
    if not audience or not all(audience):
        raise ConfigError(f"{path}: expected the accepted audience (a string or a list of non-empty strings)")
    return audience


def _leeway(value: Any, path: str, environ: Mapping[str, str]) -> float:
    leeway = float(non_negative(number)(value, path, environ))
    if leeway > MAX_LEEWAY:
        raise ConfigError(f"{path}: at most {MAX_LEEWAY:g} seconds, got {leeway:g}")
    return leeway


_ISSUER: dict[str, Reader] = {
    "issuer": string,
    "audience": _audience,
    "jwks_url": _jwks_url,
    "key": string,
    "secret": string,
    "algorithms": string_list,
    "leeway": _leeway,
    "name_claim": _claim,
    "roles_claim": _claims,
    "admin_roles": _words("a role"),
    "scopes": _words("a scope"),
    "cache_seconds": positive(number),
    "refresh_seconds": positive(number),
    "jwks_timeout": positive(number),
}


def _algorithms(entry: dict[str, Any], path: str) -> tuple[str, ...]:
    """
    Check C{algorithms} against the kind of key (or supply the default).
    """
    given: tuple[str, ...] | None = entry.get("algorithms")
    where = f"{path}.algorithms"
    if entry.get("secret"):
        allowed: tuple[str, ...] = tuple(HMAC)
        default: tuple[str, ...] = ("HS256",)
        why = "a shared secret verifies HS256, HS384 or HS512 only"
    elif entry.get("key"):
        try:
            allowed = default = algorithms_of_key(load_public_key(entry["key"]))
        except ValueError as error:
            raise ConfigError(f"{path}.key: {error}") from None
        why = f"this key verifies {', '.join(allowed)} only"
    else:
        allowed = default = ASYMMETRIC
        why = f"a JWKS verifies {', '.join(ASYMMETRIC)} (HS* only with a shared secret)"
    if given is None:
        return default
    if not given:
        raise ConfigError(f"{where}: name at least one algorithm")
    for index, alg in enumerate(given):
        if alg.lower() == "none":
            raise ConfigError(f"{where}[{index}]: 'none' is never accepted (an unsigned token proves nothing)")
        if alg not in allowed:
            raise ConfigError(f"{where}[{index}]: {alg!r} is refused: {why}")
    return tuple(dict.fromkeys(given))


def _issuer(path: str, name: str, raw: Any, environ: Mapping[str, str]) -> IssuerConfig:
    if not ISSUER_NAME.fullmatch(name):
        raise ConfigError(f"{path}: an issuer's name is 1-32 of A-Z a-z 0-9 _ - (it prefixes its principals' names)")
    entry = section(raw, path, environ, _ISSUER)
    if not entry.get("issuer", "").strip():
        raise ConfigError(f"{path}.issuer: missing (the exact iss of its tokens, e.g. https://idp.example.com/)")
    if "audience" not in entry:
        raise ConfigError(f"{path}.audience: missing (the aud its tokens carry for this gateway)")
    sources = [key for key in ("jwks_url", "key", "secret") if entry.get(key)]
    if len(sources) != 1:
        given = ", ".join(sources) if sources else "none"
        raise ConfigError(f"{path}: give exactly one of jwks_url, key or secret (given: {given})")
    secret = entry.get("secret", "")
    entry["algorithms"] = _algorithms(entry, path)
    if secret:
        needed = max(HMAC[alg] for alg in entry["algorithms"])
        if len(secret.encode("utf-8")) < needed:
            raise ConfigError(
                f"{path}.secret: at least {needed} bytes for {', '.join(entry['algorithms'])} "
                f"(got {len(secret.encode('utf-8'))}; RFC 7518 section 3.2)"
            )
    return IssuerConfig(name=name, **entry)


def issuers_from_config(value: Any, path: str, environ: Mapping[str, str]) -> tuple[IssuerConfig, ...]:
    """
    Read C{server.issuers}: an object keyed by issuer name.

    @raise ConfigError: Naming the key path, e.g. C{server.issuers.corp.algorithms[0]}.
    """
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected an object keyed by issuer name, got {kind(value)}")
    issuers = tuple(_issuer(f"{path}.{name}", name, raw, environ) for name, raw in value.items())
    seen: dict[str, str] = {}
    for entry in issuers:
        other = seen.setdefault(entry.issuer, entry.name)
        if other != entry.name:
            raise ConfigError(f"{path}.{entry.name}.issuer: {entry.issuer!r} is also the issuer of {other}")
    return issuers
