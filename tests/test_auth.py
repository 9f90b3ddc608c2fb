"""
L{mcpgateway.policy.auth.Authenticator}: Basic and Bearer credentials, and
what it admits without a failure budget (strong tokens; credentials
verified before from the same address).
"""

from __future__ import annotations

import base64

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st

import mcpgateway.policy.auth
from mcpgateway.config import PrincipalConfig, ServerConfig
from mcpgateway.policy.auth import STRONG_TOKEN_BYTES, Authenticator, Principal, hash_password, hash_token


def basic(user: str | bytes, password: str | bytes, scheme: bytes = b"Basic") -> bytes:
    raw_user = user.encode() if isinstance(user, str) else user
    raw_password = password.encode() if isinstance(password, str) else password
    return scheme + b" " + base64.b64encode(raw_user + b":" + raw_password)


BOTH = Authenticator(ServerConfig(auth_user="alice", auth_password="s3cret:pw", auth_token="tok-123"))
BASIC_ONLY = Authenticator(ServerConfig(auth_user="alice", auth_password="s3cret:pw"))
TOKEN_ONLY = Authenticator(ServerConfig(auth_token="tok-123"))


def test_basic_good() -> None:
    assert BOTH.check(basic("alice", "s3cret:pw"))
    assert BASIC_ONLY.check(basic("alice", "s3cret:pw"))


def test_basic_bad_user() -> None:
    assert not BOTH.check(basic("bob", "s3cret:pw"))
    assert not BOTH.check(basic("", "s3cret:pw"))
    assert not BOTH.check(basic("alice2", "s3cret:pw"))


def test_basic_bad_password() -> None:
    assert not BOTH.check(basic("alice", "s3cret"))
    assert not BOTH.check(basic("alice", "s3cret:pwx"))
    assert not BOTH.check(basic("alice", ""))


GOOD_BASIC = base64.b64encode(b"alice:s3cret:pw")


@pytest.mark.parametrize(
    "value", [b"not base64!", GOOD_BASIC[:-1], GOOD_BASIC[:4] + b" " + GOOD_BASIC[4:], GOOD_BASIC + b"!", b"===="]
)
def test_basic_malformed_base64(value: bytes) -> None:
    assert BOTH.check(b"Basic " + GOOD_BASIC)
    assert not BOTH.check(b"Basic " + value)


def test_basic_empty_value() -> None:
    assert not BOTH.check(b"Basic ")
    assert not BOTH.check(b"Basic")


def test_basic_without_colon() -> None:
    assert not BOTH.check(b"Basic " + base64.b64encode(b"alices3cretpw"))
    assert not BOTH.check(b"Basic " + base64.b64encode(b"alice"))


def test_bearer_good() -> None:
    assert BOTH.check(b"Bearer tok-123")
    assert TOKEN_ONLY.check(b"Bearer tok-123")


@pytest.mark.parametrize("header", [b"Bearer tok-12", b"Bearer tok-1234", b"Bearer ", b"Bearer", b"Bearer TOK-123"])
def test_bearer_bad(header: bytes) -> None:
    assert not BOTH.check(header)


def test_bearer_refused_without_a_token() -> None:
    assert not BASIC_ONLY.check(b"Bearer ")
    assert not BASIC_ONLY.check(b"Bearer tok-123")


@pytest.mark.parametrize("scheme", [b"basic", b"BASIC", b"bAsIc"])
def test_basic_scheme_case_insensitive(scheme: bytes) -> None:
    assert BOTH.check(basic("alice", "s3cret:pw", scheme=scheme))


@pytest.mark.parametrize("scheme", [b"bearer", b"BEARER", b"BeArEr"])
def test_bearer_scheme_case_insensitive(scheme: bytes) -> None:
    assert BOTH.check(scheme + b" tok-123")


def test_surrounding_blanks_are_ignored() -> None:
    assert BOTH.check(b"  Bearer   tok-123  ")
    assert BOTH.check(b" " + basic("alice", "s3cret:pw") + b" ")


def test_non_ascii_credentials() -> None:
    auth = Authenticator(ServerConfig(auth_user="jürgen", auth_password="pässwörd✓"))
    assert auth.check(basic("jürgen", "pässwörd✓"))
    assert not auth.check(basic("jürgen", "passwörd✓"))
    assert not auth.check(basic("jürgen".encode("latin-1"), "pässwörd✓".encode()))


def test_non_ascii_token() -> None:
    auth = Authenticator(ServerConfig(auth_token="tökén"))
    assert auth.check("Bearer tökén".encode())
    assert not auth.check(b"Bearer t\xf6k\xe9n")


def test_digit_only_password() -> None:
    auth = Authenticator(ServerConfig(auth_user="1234", auth_password="0123456789"))
    assert auth.check(basic("1234", "0123456789"))
    assert not auth.check(basic("1234", "123456789"))


def test_token_configured_basic_not_configured_refuses_basic() -> None:
    assert not TOKEN_ONLY.check(basic("", "tok-123"))
    assert not TOKEN_ONLY.check(basic("", ""))
    assert not TOKEN_ONLY.check(b"Basic " + base64.b64encode(b":"))


def test_user_without_password_is_no_basic_configuration() -> None:
    auth = Authenticator(ServerConfig(auth_user="alice"))
    assert not auth.check(basic("alice", ""))


def test_nothing_configured_refuses_everything() -> None:
    auth = Authenticator(ServerConfig())
    assert not auth.check(b"Bearer ")
    assert not auth.check(basic("", ""))


@pytest.mark.parametrize("header", [None, b"", b"   "])
def test_empty_header(header: bytes | None) -> None:
    assert not BOTH.check(header)


@pytest.mark.parametrize("header", [b"Digest tok-123", b"tok-123", b"Token tok-123", b"Bearer\ttok-123"])
def test_other_schemes_refused(header: bytes) -> None:
    assert not BOTH.check(header)


@given(st.binary(max_size=200))
def test_random_headers_never_raise(header: bytes) -> None:
    assert BOTH.check(header) in (True, False)
    assert TOKEN_ONLY.check(header) in (True, False)


@given(st.sampled_from([b"Basic ", b"basic ", b"Bearer "]), st.binary(max_size=120))
def test_random_credentials_never_raise_and_never_pass(scheme: bytes, value: bytes) -> None:
    if value.strip() in (b"tok-123", GOOD_BASIC):
        return
    assert BOTH.check(scheme + value) is False


@given(st.text(max_size=30), st.text(max_size=30))
def test_random_basic_credentials_pass_only_when_right(user: str, password: str) -> None:
    expected = f"{user}:{password}" == "alice:s3cret:pw"
    assert BOTH.check(basic(user, password)) is expected


# -- what can be admitted without a budget (Authenticator.recall) ----------------

STRONG = "strong-token-0123456789abcdef0123456789"  # 39 bytes
assert len(STRONG) >= STRONG_TOKEN_BYTES


def lockout_authenticator() -> Authenticator:
    return Authenticator(
        ServerConfig(
            auth_user="alice",
            auth_password="s3cret:pw",
            auth_token=STRONG,
            principals=(
                PrincipalConfig("bob", token_hash=hash_token("bob-short")),
                PrincipalConfig("carol", token_hash=hash_token(STRONG + "-carol")),
            ),
        )
    )


def admitted(auth: Authenticator, header: bytes, address: str | None) -> str | None:
    """
    @return: The name L{Authenticator.authenticate} fires with (no hash
        involved here, so it has fired), or L{None}.
    """
    results: list[Principal | None] = []
    auth.authenticate(header, address).addCallback(results.append)
    assert len(results) == 1
    return results[0].name if results[0] else None


def test_strong_tokens_are_checked_in_full_by_recall() -> None:
    auth = lockout_authenticator()
    seed = (b"Bearer " + STRONG.encode(), "alice")
    carol = (b"Bearer " + STRONG.encode() + b"-carol", "carol")
    for header, name in (seed, carol):
        assert not auth.guessable(header)
        recalled = auth.recall(header, "192.0.2.1")
        assert recalled is not None and recalled.name == name
    wrong = b"Bearer " + STRONG.encode() + b"x"
    assert not auth.guessable(wrong)
    assert auth.recall(wrong, "192.0.2.1") is None


@pytest.mark.parametrize(
    "header",
    [
        None,
        b"",
        b"Bearer bob-short",
        b"Bearer " + b"x" * (STRONG_TOKEN_BYTES - 1),
        basic("alice", "s3cret:pw"),
        b"Digest x",
    ],
)
def test_passwords_short_tokens_and_nothing_are_guessable(header: bytes | None) -> None:
    auth = lockout_authenticator()
    assert auth.guessable(header)
    assert auth.recall(header, "192.0.2.1") is None, "never recalled before it was verified"


@pytest.mark.parametrize("header", [basic("alice", "s3cret:pw"), b"Bearer bob-short"])
def test_a_guessable_credential_is_recalled_only_from_where_it_was_verified(header: bytes) -> None:
    auth = lockout_authenticator()
    assert admitted(auth, header, None) is not None
    assert auth.recall(header, "192.0.2.1") is None, "verified from no address"
    name = admitted(auth, header, "192.0.2.1")
    recalled = auth.recall(header, "192.0.2.1")
    assert recalled is not None and recalled.name == name
    assert auth.recall(header, "192.0.2.2") is None, "not an oracle for other addresses"


def test_a_wrong_credential_is_never_recalled() -> None:
    auth = lockout_authenticator()
    assert admitted(auth, basic("alice", "s3cret:pw"), "192.0.2.1") == "alice"
    assert auth.recall(basic("alice", "wrong"), "192.0.2.1") is None
    assert auth.recall(basic("alice", "s3cret:pw") + b"=", "192.0.2.1") is None
    # The same value under another scheme is another credential.
    assert admitted(auth, b"Bearer bob-short", "192.0.2.1") == "bob"
    assert auth.recall(b"Basic bob-short", "192.0.2.1") is None


def test_remembered_addresses_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mcpgateway.policy.auth, "_SOURCES_SIZE", 2)
    auth = lockout_authenticator()
    header = basic("alice", "s3cret:pw")
    for address in ("192.0.2.1", "192.0.2.2"):
        admitted(auth, header, address)
    assert auth.recall(header, "192.0.2.1") is not None  # now the most recently used
    admitted(auth, header, "192.0.2.3")
    assert auth.recall(header, "192.0.2.2") is None, "the least recently used address is forgotten"
    assert auth.recall(header, "192.0.2.1") is not None
    assert auth.recall(header, "192.0.2.3") is not None


@pytest.mark.parametrize(
    ("header", "name"),
    [
        (basic("alice", "x"), b"alice"),
        (basic(b"\xff/\x00", "x"), b"\xff/\x00"),
        (basic("", "x"), b""),
        (b"Basic " + base64.b64encode(b"no-colon"), None),
        (b"Basic !!!", None),
        (b"Bearer alice", None),
        (None, None),
    ],
)
def test_user_name(header: bytes | None, name: bytes | None) -> None:
    assert lockout_authenticator().user_name(header) == name


@pytest_twisted.ensureDeferred
async def test_a_verification_that_breaks_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[bytes] = []

    def broken(encoded: str, password: bytes) -> bool:
        tried.append(password)
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(mcpgateway.policy.auth, "_verify_password", broken)
    auth = Authenticator(
        ServerConfig(principals=(PrincipalConfig("dave", password_hash=hash_password("pw", n=2**10)),))
    )
    header = basic("dave", "pw")
    for attempt in (1, 2):
        assert auth.costly(header), "neither remembered nor being verified"
        with pytest.raises(RuntimeError):
            await auth.authenticate(header, "192.0.2.1")
        assert len(tried) == attempt
    assert auth.recall(header, "192.0.2.1") is None
