"""
Per-principal credentials (the C{secrets} section and a service's
C{credentials}): the configuration's errors, the sources, which mapping
applies, and, end to end with a real child (C{servers/credential_server.py})
through REST and C{/mcp}, that each principal's child holds its own token and
nobody else's, that a principal without one is refused before anything
starts, and that no token leaves by the logs, the audit log, an error body,
a stderr tail or C{/metrics}.  Reloading on SIGHUP is in C{test_twistd.py}.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from mcpgateway.config import AuditConfig, ConfigError, parse_config
from mcpgateway.errors import Forbidden
from mcpgateway.lib.redact import SECRET_VALUES, SecretValues
from mcpgateway.observe.audit import AuditLog
from mcpgateway.observe.logs import logger, redacting
from mcpgateway.policy.auth import Principal, hash_token
from mcpgateway.policy.credentials import Credentials

from .conftest import PYTHON, SERVERS, wait_until
from .test_audit import stored
from .test_mcp_front import connect, in_thread

CREDENTIAL_SERVER = str(SERVERS / "credential_server.py")
ALICE_SECRET = "tok-alice-5f0c2a9d81e4"
BOB_SECRET = "tok-bob-93b7d1e6c240aa"
DEFAULT_SECRET = "tok-default-1c2d3e4f5a"
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789", "carol": "carol-token-0123456789"}
ROOT_TOKEN = "root-token-9876543210"


def bearer(who: str) -> dict[str, Any]:
    token = ROOT_TOKEN if who == "root" else TOKENS[who]
    return {"auth": None, "headers": {b"Authorization": [b"Bearer " + token.encode()]}}


def principals() -> dict[str, Any]:
    entries = [{"name": name, "role": "agent", "token_hash": hash_token(token)} for name, token in TOKENS.items()]
    entries.append({"name": "root", "role": "admin", "token_hash": hash_token(ROOT_TOKEN)})
    return {"principals": entries}


def secrets_file(directory: Path, values: dict[str, str], mode: int = 0o600) -> Path:
    """
    Write C{secrets.json} as an operator would replace it: whole, by a rename
    (a reload under way in its thread reads the old file or the new, never half).
    """
    path = directory / "secrets.json"
    partial = directory / "secrets.json.new"
    partial.write_text(json.dumps(values))
    partial.chmod(mode)
    os.replace(partial, path)
    return path


def github_service(**settings: Any) -> dict[str, Any]:
    """
    A GitHub-like service: alice and bob each get their own C{GITHUB_TOKEN}.
    """
    return {
        "command": [PYTHON, CREDENTIAL_SERVER],
        "credentials": {
            "principals": {
                "alice": {"env": {"GITHUB_TOKEN": "alice-github"}},
                "bob": {"env": {"GITHUB_TOKEN": "bob-github"}},
            }
        },
        **settings,
    }


def config_error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        Credentials.from_config(parse_config(raw, environ={}))
    return str(caught.value)


# -- configuration ---------------------------------------------------------------------------------


SERVICE = {"command": ["server"]}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"services": {"gh": {**SERVICE, "credentials": {"default": {"env": {"T": "x"}}}}}},
            "services.gh.credentials: there is no secrets section",
        ),
        ({"secrets": {}}, "secrets: give at least one of file, directory or env"),
        ({"secrets": {"vault": "x"}}, "secrets.vault: unknown key"),
        ({"secrets": {"env": {"gh": "1BAD"}}}, "secrets.env.gh: not an environment variable name"),
        ({"secrets": {"env": {"-gh": "GH"}}}, "secrets.env.-gh: a secret name is"),
        (
            {"secrets": {"env": {"gh": "GH"}}, "services": {"gh": {**SERVICE, "credentials": {}}}},
            "services.gh.credentials: give principals, roles and/or default",
        ),
        (
            {
                "secrets": {"env": {"gh": "GH"}},
                "services": {"gh": {**SERVICE, "credentials": {"principals": {"al": {"env": {"1X": "gh"}}}}}},
            },
            "services.gh.credentials.principals.al.env.1X: not an environment variable name",
        ),
        (
            {
                "secrets": {"env": {"gh": "GH"}},
                "services": {"gh": {**SERVICE, "credentials": {"default": {"env": {"LD_PRELOAD": "gh"}}}}},
            },
            "services.gh.credentials.default.env.LD_PRELOAD: the sandbox never passes LD_PRELOAD to a child",
        ),
        (
            {
                "secrets": {"env": {"gh": "GH"}},
                "services": {"gh": {**SERVICE, "credentials": {"roles": {"agent": {"headers": {"Host": "gh"}}}}}},
            },
            "services.gh.credentials.roles.agent.headers.Host: the gateway sets Host itself",
        ),
        (
            {
                "secrets": {"env": {"gh": "GH"}},
                "services": {
                    "gh": {**SERVICE, "credentials": {"default": {"headers": {"Authorization": "Bearer {gh"}}}}
                },
            },
            "services.gh.credentials.default.headers.Authorization: expected a secret name or a text",
        ),
        (
            {
                "secrets": {"env": {"gh": "GH"}},
                "services": {"gh": {**SERVICE, "credentials": {"default": {"env": {}}}}},
            },
            "services.gh.credentials.default: give env and/or headers",
        ),
        (
            {
                "secrets": {"env": {"gh": "GH"}},
                "services": {"gh": {**SERVICE, "prewarm": 1, "credentials": {"default": {"env": {"T": "gh"}}}}},
            },
            "services.gh.prewarm: a warm child is started for nobody",
        ),
        (
            {
                "secrets": {"env": {"gh": "GH"}},
                "services": {"gh": {**SERVICE, "env": {"T": "1"}, "credentials": {"default": {"env": {"T": "gh"}}}}},
            },
            "services.gh.credentials.default.env.T: also set in services.gh.env",
        ),
        (
            {
                "secrets": {"env": {"gh": "GH"}},
                "services": {"gh": {**SERVICE, "credentials": {"default": {"env": {"T": "gh"}, "x": 1}}}},
            },
            "services.gh.credentials.default.x: unknown key",
        ),
    ],
)
def test_configuration_errors_name_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, environ={})
    assert message in str(caught.value)


def test_loading_errors_name_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = secrets_file(tmp_path, {"alice-github": ALICE_SECRET, "short": "abc"})
    service = {**SERVICE, "credentials": {"principals": {"alice": {"env": {"GITHUB_TOKEN": "alice-gh"}}}}}
    assert config_error({"secrets": {"file": str(path)}, "services": {"gh": service}}) == (
        "services.gh.credentials.principals.alice.env.GITHUB_TOKEN: no source gives a secret named 'alice-gh'"
    )
    service = {**SERVICE, "credentials": {"default": {"headers": {"Authorization": "Bearer {short}"}}}}
    assert "services.gh.credentials.default.headers.Authorization: secret 'short' is shorter than 8" in (
        config_error({"secrets": {"file": str(path)}, "services": {"gh": service}})
    )
    # A header cannot carry a non-ASCII or control character: said at load, not as a 503 at the first call.
    odd = {"euro": "tok-\u20ac-0123456789", "tab": "tok\t0123456789"}
    path = secrets_file(tmp_path, {"alice-github": ALICE_SECRET, **odd})
    for name in ("euro", "tab"):
        service = {**SERVICE, "credentials": {"default": {"headers": {"Authorization": f"Bearer {{{name}}}"}}}}
        assert f"services.gh.credentials.default.headers.Authorization: secret '{name}' is not printable ASCII" in (
            config_error({"secrets": {"file": str(path)}, "services": {"gh": service}})
        )
    monkeypatch.setenv("ALICE_GH", ALICE_SECRET)
    raw = {"secrets": {"file": str(path), "env": {"alice-github": "ALICE_GH"}}}
    with pytest.raises(ConfigError, match=r"secrets.env.alice-github: secret 'alice-github' is also given by"):
        Credentials.from_config(parse_config(raw))
    raw = {"secrets": {"env": {"alice-github": "NOT_SET_ANYWHERE_42"}}}
    with pytest.raises(ConfigError, match=r"secrets\.env\.alice-github: the environment variable NOT_SET_ANYWHERE_42"):
        Credentials.from_config(parse_config(raw))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_secrets_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = secrets_file(tmp_path, {"alice-github": ALICE_SECRET}, mode)
    message = config_error({"secrets": {"file": str(path)}})
    assert message == (
        f"secrets.file: {path}: mode {mode:04o} lets others read it; it must be 0600 or stricter (chmod 600 {path})"
    )
    assert ALICE_SECRET not in message


def test_a_secrets_file_of_another_user_is_refused(tmp_path: Path) -> None:
    path = secrets_file(tmp_path, {"alice-github": ALICE_SECRET}, 0o400)
    credentials = Credentials({}, parse_config({"secrets": {"file": str(path)}}).secrets, uid=os.geteuid() + 1)
    with pytest.raises(ConfigError, match=rf"owned by uid {os.geteuid()}, not by the gateway.s user"):
        credentials.load()


def test_a_broken_secrets_file_does_not_quote_itself(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text('{"alice-github": "' + ALICE_SECRET + '" oops}')
    path.chmod(0o600)
    message = config_error({"secrets": {"file": str(path)}})
    assert "not valid JSON (line 1)" in message
    assert ALICE_SECRET not in message


def test_a_directory_of_secrets_as_kubernetes_mounts_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mount = tmp_path / "secrets"
    data = mount / "..2026_12_03_12_00_00.000"
    data.mkdir(parents=True)
    (data / "alice-github").write_text(ALICE_SECRET + "\n")
    (data / "bob-github").write_text(BOB_SECRET)
    (mount / "..data").symlink_to(data.name)
    for name in ("alice-github", "bob-github"):
        (mount / name).symlink_to(f"..data/{name}")
    (mount / "not a name").write_text("ignored")
    monkeypatch.setenv("DEFAULT_GH", DEFAULT_SECRET)
    raw = {"secrets": {"directory": str(mount), "env": {"default-github": "DEFAULT_GH"}}}
    credentials = Credentials.from_config(parse_config(raw))
    try:
        assert credentials.values == {
            "alice-github": ALICE_SECRET,
            "bob-github": BOB_SECRET,
            "default-github": DEFAULT_SECRET,
        }
    finally:
        credentials.stop()


# -- which mapping applies ---------------------------------------------------------------------------


@pytest.fixture
def layered(tmp_path: Path) -> Any:
    path = secrets_file(
        tmp_path,
        {"alice-github": ALICE_SECRET, "bob-github": BOB_SECRET, "default-github": DEFAULT_SECRET},
    )
    raw = {
        "secrets": {"file": str(path)},
        "services": {
            "gh": {
                **SERVICE,
                "credentials": {
                    "principals": {
                        "alice": {
                            "env": {"GITHUB_TOKEN": "alice-github"},
                            "headers": {"Authorization": "Bearer {alice-github}"},
                        }
                    },
                    "roles": {
                        "admin": {"headers": {"Authorization": "bob-github"}},
                        "ops": {"env": {"GITHUB_TOKEN": "bob-github"}, "headers": {"X-Token": "{bob-github}"}},
                    },
                    "default": {"headers": {"Authorization": "token {default-github}"}},
                },
            },
            "plain": SERVICE,
        },
    }
    credentials = Credentials.from_config(parse_config(raw, environ={}))
    yield credentials
    credentials.stop()


def test_the_principal_before_its_role_before_the_default(layered: Credentials) -> None:
    alice = layered.for_principal("gh", Principal("alice", "agent", ("ops",)))
    assert alice.env == {"GITHUB_TOKEN": ALICE_SECRET}
    assert alice.headers == {"Authorization": f"Bearer {ALICE_SECRET}"}
    assert alice.granted == "services.gh.credentials.principals.alice"
    # A JWT principal's roles claim: the first role with a mapping, whole.
    ops = layered.for_principal("gh", Principal("issuer:dave", "agent", ("viewer", "ops")))
    assert (ops.env, ops.headers) == ({"GITHUB_TOKEN": BOB_SECRET}, {"X-Token": BOB_SECRET})
    # The configured role comes before the claimed ones.
    root = layered.for_principal("gh", Principal("root", "admin", ("ops",)))
    assert (root.env, root.headers) == ({}, {"Authorization": BOB_SECRET})
    other = layered.for_principal("gh", Principal("erin", "agent"))
    assert (other.env, other.headers) == ({}, {"Authorization": f"token {DEFAULT_SECRET}"})
    assert layered.for_principal("plain", Principal("erin", "agent")).env == {}
    assert not layered.applies("plain")


def test_no_mapping_is_no_credential(tmp_path: Path) -> None:
    path = secrets_file(tmp_path, {"alice-github": ALICE_SECRET})
    service = {**SERVICE, "credentials": {"principals": {"alice": {"headers": {"Authorization": "alice-github"}}}}}
    credentials = Credentials.from_config(parse_config({"secrets": {"file": str(path)}, "services": {"gh": service}}))
    try:
        with pytest.raises(Forbidden) as caught:
            credentials.for_principal("gh", Principal("bob", "agent"))
        assert (caught.value.status, caught.value.code) == (403, "no_credential")
        assert caught.value.body() == {
            "error": "bob has no credential for service 'gh'",
            "code": "no_credential",
            "service": "gh",
        }
        # A tool lister is nobody: no default, no credential.
        assert credentials.for_listing("gh").headers == {}
    finally:
        credentials.stop()


def test_a_tool_lister_gets_the_default_only(layered: Credentials) -> None:
    assert layered.for_listing("gh").headers == {"Authorization": f"token {DEFAULT_SECRET}"}


# -- redaction by value ---------------------------------------------------------------------------------


def test_values_are_redacted_in_texts_and_json() -> None:
    values = SecretValues()
    assert values.text(ALICE_SECRET) == ALICE_SECRET
    values.set("a", [("alice-github", ALICE_SECRET), ("short", "abc"), ("prefix", ALICE_SECRET[:10])])
    assert values.text(f"x {ALICE_SECRET}y abc") == "x [secret:alice-github]y abc"
    assert values.text(ALICE_SECRET[:10]) == "[secret:prefix]"
    assert values.value({ALICE_SECRET: [1, {"k": f"Bearer {ALICE_SECRET}"}]}) == {
        "[secret:alice-github]": [1, {"k": "Bearer [secret:alice-github]"}]
    }
    values.forget("a")
    assert not values
    assert values.text(ALICE_SECRET) == ALICE_SECRET


def test_log_events_are_redacted(layered: Credentials) -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        log = logger("mcpgateway.test")
        log.info("token {token} in {where!r}", token=ALICE_SECRET, where={"header": f"Bearer {BOB_SECRET}"})
    finally:
        globalLogPublisher.removeObserver(events.append)
    # The same filter, off the global publisher (a logged failure fails the test).
    private = Logger("mcpgateway.test", observer=redacting(events.append))
    try:
        raise ValueError(f"refused {ALICE_SECRET}")
    except ValueError:
        private.failure("it failed with " + BOB_SECRET, Failure())
    texts = [formatEvent(event) for event in events]
    texts += [event["log_failure"].getTraceback() for event in events if "log_failure" in event]
    assert texts[0] == "token [secret:alice-github] in {'header': 'Bearer [secret:bob-github]'}"
    assert texts[1] == "it failed with [secret:bob-github]"
    assert "ValueError: refused [secret:alice-github]" in texts[2]
    assert not [text for text in texts if ALICE_SECRET in text or BOB_SECRET in text]


# -- end to end: real children, REST and /mcp ---------------------------------------------------------------


@pytest.fixture
def github(tmp_path: Path, live: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """
    A live gateway whose service C{gh} maps alice's token (from the file)
    and bob's (from the gateway's environment, which children at the
    default sandbox level otherwise inherit).
    """
    monkeypatch.setenv("TEST_BOB_GITHUB", BOB_SECRET)
    path = secrets_file(tmp_path, {"alice-github": ALICE_SECRET})

    def start(**app_options: Any) -> Any:
        return live(
            {"gh": github_service(stderr_tail="all")},
            app_options or None,
            server=principals(),
            secrets={"file": str(path), "env": {"bob-github": "TEST_BOB_GITHUB"}},
        )

    return start


async def whoami(gw: Any, who: str, session: str) -> tuple[int, Any]:
    response, body = await gw.request(
        "POST", "/services/gh/call", {"tool": "whoami", "session_id": session, "arguments": {}}, **bearer(who)
    )
    return response.code, json.loads(body["result"]) if response.code == 200 else body


@pytest_twisted.ensureDeferred
async def test_each_principal_calls_with_its_own_token_over_rest(github: Any) -> None:
    gw = github()
    status, alice = await whoami(gw, "alice", "a1")
    assert (status, alice["token"], alice["variables"]) == (200, ALICE_SECRET, ["GITHUB_TOKEN"])
    status, bob = await whoami(gw, "bob", "b1")
    # Bob's child holds his token only: not alice's, and not the gateway's
    # TEST_BOB_GITHUB it would otherwise inherit.
    assert (status, bob["token"], bob["variables"]) == (200, BOB_SECRET, ["GITHUB_TOKEN"])
    status, again = await whoami(gw, "alice", "a1")
    assert (status, again["token"], again["pid"]) == (200, ALICE_SECRET, alice["pid"])
    assert bob["pid"] != alice["pid"]
    assert len(gw.children()) == 2  # one child each, none shared

    # No mapping: refused before anything starts.
    spawns = gw.gateway.services["gh"].spawns
    status, body = await whoami(gw, "carol", "c1")
    assert (status, body) == (
        403,
        {"error": "carol has no credential for service 'gh'", "code": "no_credential", "service": "gh"},
    )
    assert (len(gw.children()), gw.gateway.services["gh"].spawns) == (2, spawns)
    assert "c1" not in {session for session in gw.gateway.list_sessions(Principal("root", "admin"))}

    # An admin may use alice's session, never with alice's credential.
    status, body = await whoami(gw, "root", "a1")
    assert (status, body["code"]) == (403, "no_credential")
    assert "only alice may call it" in body["error"]


@pytest_twisted.ensureDeferred
async def test_a_token_the_server_refuses_at_start_backs_off_that_caller_only(
    tmp_path: Path, live: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Alice's token is revoked: her child exits at start.  That backs off her
    credential, not the service: bob's call starts his child at once, and
    alice's next call is refused from the backoff without a start.
    """
    revoked = "tok-revoked-0123456789"
    monkeypatch.setenv("TEST_BOB_GITHUB", BOB_SECRET)
    path = secrets_file(tmp_path, {"alice-github": revoked})
    gw = live(
        {"gh": github_service(backoff_initial=30, backoff_max=30, stderr_tail="all")},
        server=principals(),
        secrets={"file": str(path), "env": {"bob-github": "TEST_BOB_GITHUB"}},
    )
    service = gw.gateway.services["gh"]
    status, body = await whoami(gw, "alice", "a1")
    assert (status, body["code"]) == (503, "service_unavailable"), body
    assert "failed to start with this caller's credential" in body["error"]
    assert "[secret:alice-github]" in body["stderr_tail"] and revoked not in json.dumps(body)
    status, bob = await whoami(gw, "bob", "b1")
    assert (status, bob["token"]) == (200, BOB_SECRET)
    spawns = service.spawns
    response, body = await gw.request(
        "POST", "/services/gh/call", {"tool": "whoami", "session_id": "a2", "arguments": {}}, **bearer("alice")
    )
    assert (response.code, body["code"]) == (503, "service_unavailable"), body
    assert 0 < int(response.headers.getRawHeaders(b"retry-after")[0]) <= 30
    assert service.spawns == spawns  # refused from her backoff: nothing started
    _, services = await gw.request("GET", "/services", **bearer("root"))
    assert services["gh"]["state"] == "ready"
    assert service.status()["credentials_backing_off"] == 1
    assert (await whoami(gw, "bob", "b2"))[0] == 200


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
@pytest_twisted.ensureDeferred
async def test_each_principal_calls_with_its_own_token_over_mcp(github: Any, mode: str) -> None:
    gw = github()

    async def as_(who: str) -> Any:
        token = TOKENS[who]
        async with connect(gw.url + "/services/gh/mcp", mode, authorization=f"Bearer {token}") as client:
            try:
                result = await client.call_tool("whoami", {})
            except Exception as error:  # the SDK's MCPError
                return error
            return json.loads(result.content[0].text)

    alice = await in_thread(as_("alice"))
    bob = await in_thread(as_("bob"))
    assert (alice["token"], alice["variables"]) == (ALICE_SECRET, ["GITHUB_TOKEN"])
    assert (bob["token"], bob["variables"]) == (BOB_SECRET, ["GITHUB_TOKEN"])
    before = gw.gateway.services["gh"].spawns
    refused = await in_thread(as_("carol"))
    assert refused.error.code == -32602  # INVALID_PARAMS, as forbidden_tool
    assert refused.error.data["reason"] == "no_credential"
    assert refused.error.data["status"] == 403
    assert "carol has no credential" in refused.error.message
    assert gw.gateway.services["gh"].spawns == before  # nothing started for carol


@pytest_twisted.ensureDeferred
async def test_no_token_leaves_by_logs_audit_errors_or_stderr(github: Any, tmp_path: Path) -> None:
    uri = f"sqlite:{tmp_path / 'audit.sqlite3'}"
    audit = AuditLog(AuditConfig(results=("*",)), uri, reactor, reactor, gateway="gw-test")
    audit.start()
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        gw = github(observers=[audit], audit=audit)
        # The tool result is alice's own: she gets her token (that is the point).
        status, alice = await whoami(gw, "alice", "a1")
        assert (status, alice["token"]) == (200, ALICE_SECRET)
        # A careless server's error quotes the token; arguments may carry it too.
        response, body = await gw.request(
            "POST",
            "/services/gh/call",
            {"tool": "leak", "session_id": "a1", "arguments": {"note": f"mine is {ALICE_SECRET}"}},
            **bearer("alice"),
        )
        assert response.code == 422
        assert body["error"] == "gh answered with JSON-RPC error -32000: the API refused token [secret:alice-github]"
        assert body["mcp_data"] == {"token": "[secret:alice-github]"}
        # A crash: its stderr tail (shown to all for this service) is redacted.
        response, body = await gw.request(
            "POST", "/services/gh/call", {"tool": "crash", "session_id": "b1", "arguments": {}}, **bearer("bob")
        )
        assert response.code == 502
        assert "fatal: token [secret:bob-github] was revoked" in body["stderr_tail"]
        assert BOB_SECRET not in json.dumps(body)
        await wait_until(lambda: any("was revoked" in formatEvent(event) for event in events))
        # Metric labels are configured or declared names, and a child may
        # declare any name: say this one declared a tool named like a token.
        gw.gateway.services["gh"].declares = lambda tool: True
        gw.app.metrics.tool_call("gh", ALICE_SECRET, "ok", 0.01)
        response, metrics = await gw.request("GET", "/metrics")
        assert response.code == 200
        assert 'tool="[secret:alice-github]"' in metrics.decode()
        await audit.flush()
    finally:
        globalLogPublisher.removeObserver(events.append)
        await audit.stop()
    rows = json.dumps(stored(uri))
    assert "[secret:alice-github]" in rows  # the argument, the result, the error
    logged = "\n".join(formatEvent(event) for event in events)
    assert "debug: calling the API with token [secret:alice-github]" in logged  # the child's stderr line
    for secret in (ALICE_SECRET, BOB_SECRET):
        assert secret not in rows
        assert secret not in logged
        assert secret not in json.dumps([str(value) for event in events for value in event.values()])
        assert secret not in str(metrics)
    assert not SECRET_VALUES.contains(rows)


@pytest_twisted.ensureDeferred
async def test_reloads_run_in_order_and_a_bad_one_keeps_the_old_values(tmp_path: Path) -> None:
    path = secrets_file(tmp_path, {"alice-github": ALICE_SECRET})
    service = {**SERVICE, "credentials": {"principals": {"alice": {"env": {"GITHUB_TOKEN": "alice-github"}}}}}
    credentials = Credentials.from_config(parse_config({"secrets": {"file": str(path)}, "services": {"gh": service}}))
    alice = Principal("alice", "agent")
    try:
        first = credentials.reload()
        secrets_file(tmp_path, {"alice-github": BOB_SECRET})
        second = credentials.reload()  # waits for the first, then reads the new file
        assert [await first, await second] == [True, True]
        assert credentials.for_principal("gh", alice).env == {"GITHUB_TOKEN": BOB_SECRET}
        # The replaced value is still redacted: an older child holds it.
        assert SECRET_VALUES.text(ALICE_SECRET + BOB_SECRET) == "[secret:alice-github][secret:alice-github]"

        secrets_file(tmp_path, {"bob-github": DEFAULT_SECRET})  # alice's secret gone
        assert await credentials.reload() is False
        path.chmod(0o644)
        assert await credentials.reload() is False
        assert credentials.for_principal("gh", alice).env == {"GITHUB_TOKEN": BOB_SECRET}
    finally:
        credentials.stop()
    assert not SECRET_VALUES.contains(BOB_SECRET)


def test_configured_credential_headers_are_secret_values() -> None:
    """
    A url service's configured credential header (by name) is redacted,
    whole and its token; an ordinary header is not.
    """
    from mcpgateway.policy.credentials import configured_header_secrets

    config = parse_config(
        {
            "services": {
                "docs": {
                    "url": "https://mcp.example.com/mcp",
                    "headers": {
                        "Authorization": "Bearer abcdef123456",
                        "X-Api-Key": "k-0987654321",
                        "X-Team": "blue-team-42",
                    },
                }
            }
        }
    )
    assert sorted(configured_header_secrets(config.services)) == [
        ("services.docs.headers.Authorization", "Bearer abcdef123456"),
        ("services.docs.headers.Authorization", "abcdef123456"),
        ("services.docs.headers.X-Api-Key", "k-0987654321"),
    ]


def test_a_cut_leaves_no_piece_of_a_secret() -> None:
    """
    Texts shown cut (an upstream's error text, a log line's start, a stderr
    tail) are redacted before the cut: a secret the cut would split must not
    leave its first or last characters behind, which redaction by value
    cannot recognise afterwards.
    """
    from twisted.internet.task import Clock
    from twisted.web.http_headers import Headers

    from mcpgateway.errors import stderr_excerpt
    from mcpgateway.mcp.exits import StderrTail
    from mcpgateway.mcp.remote import HttpPeer

    secret = "tok-cut-4be19c07d2aa5f61"
    values = SecretValues()
    values.set("test", [("cut", secret)])
    text = "x" * 190 + secret + " trailing"
    assert secret[:10] not in values.head(text, 200)
    assert values.head(text, 200).startswith("x" * 190 + "[secret:")
    assert values.head("short", 200) == "short"

    SECRET_VALUES.set("test-cut", [("cut", secret)])
    try:

        class Answer:
            code = 401
            headers = Headers({b"content-type": [b"text/plain"]})

        body = ("refused: " + "y" * 163 + " Authorization: Bearer " + secret).encode()
        error = HttpPeer("svc", "http://127.0.0.1:1/mcp", "auto", None, Clock(), {}, 1000).bad_status(  # type: ignore[arg-type]
            Answer(), body
        )
        assert secret[:6] not in str(error) and str(error).endswith("Bearer [secr")

        tail = StderrTail(Logger(), Clock(), keep=64)
        tail.feed(b"starting\n" + b"z" * 30 + b" token=" + secret.encode() + b"\nlast line\n")
        assert secret[-6:] not in tail.text()
        assert tail.text().endswith("last line\n")
    finally:
        SECRET_VALUES.forget("test-cut")
    excerpt = stderr_excerpt("a" * 50 + secret + "\nthe end\n", 20)
    assert excerpt == "the end\n"


def test_the_access_log_file_is_redacted(tmp_path: Path) -> None:
    """
    The access log's JSON-lines file is written past the loggers (and
    their redaction): a caller that uses a secret as its session id does
    not get it written there.
    """
    from twisted.internet.task import Clock

    from mcpgateway.observe.access import AccessLog

    path = tmp_path / "access.jsonl"
    access = AccessLog(str(path), Clock())
    access.start()
    SECRET_VALUES.set("test-access", [("alice-github", ALICE_SECRET)])
    try:
        access.call(
            principal="alice", service="gh", tool="t", session=ALICE_SECRET, status=200, outcome="ok", seconds=0
        )
        access.stop()
    finally:
        SECRET_VALUES.forget("test-access")
    record = json.loads(path.read_text())
    assert record["session"] == "[secret:alice-github]"
