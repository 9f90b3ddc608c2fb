"""
The configuration reader (L{mcpgateway.config.schema} and the modules of
its sections) and the twistd options (L{mcpgateway.tap}): substitution,
schema typing, and errors that name the key path.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import MultiService
from twisted.python import usage

from mcpgateway.config import (
    ConfigError,
    GatewayConfig,
    SandboxPolicy,
    load_config,
    parse_config,
    substitute,
)
from mcpgateway.runtime import GatewayService, listening_service
from mcpgateway.tap import Options, StartRefused, makeService

ROOT = Path(__file__).parent.parent
SHIPPED = ROOT / "config" / "config.json"


def service(**fields: Any) -> dict[str, Any]:
    """
    @return: A raw configuration with one service C{todo} carrying C{fields}.
    """
    return {"services": {"todo": {"command": ["prog"], **fields}}}


def config_error(raw: Any, environ: dict[str, str] | None = None) -> str:
    """
    @return: The message of the L{ConfigError} that C{raw} raises.
    """
    with pytest.raises(ConfigError) as info:
        parse_config(raw, {} if environ is None else environ)
    return str(info.value)


# -- substitution ------------------------------------------------------------------


def test_substitute_inside_a_longer_string() -> None:
    text = "http://${HOST|localhost}:${PORT|80}/path?x=${HOST}"
    assert substitute(text, {"HOST": "example.org"}) == "http://example.org:80/path?x=example.org"


def test_substitute_unset_variable_without_default_is_empty() -> None:
    assert substitute("a-${NOPE}-b", {}) == "a--b"
    assert substitute("${NOPE|}", {}) == ""


def test_substitute_default_with_spaces_and_colons() -> None:
    assert substitute("${X|a b: c:d}", {}) == "a b: c:d"
    assert substitute("${X|redis://host:6379/0}", {}) == "redis://host:6379/0"


def test_substitute_set_variable_wins_over_default() -> None:
    assert substitute("${X|fallback}", {"X": "set"}) == "set"


def test_substitute_strips_blanks_around_the_name() -> None:
    assert substitute("${ HOST |d}", {"HOST": "h"}) == "h"


def test_substitute_is_not_recursive() -> None:
    assert substitute("${A}", {"A": "${B}", "B": "no"}) == "${B}"


def test_substitute_leaves_text_without_variables() -> None:
    assert substitute("plain $HOME {x} $", {"HOME": "/root"}) == "plain $HOME {x} $"


def test_substitution_applies_to_every_string_value() -> None:
    config = parse_config(
        service(
            command=["${PROG|python3}", "--name=${NAME|anon}"],
            description="runs on ${HOST|here}",
            env={"TOKEN": "${SECRET|none}"},
        ),
        {"NAME": "bob", "SECRET": "s3"},
    )
    todo = config.services["todo"]
    assert todo.command == ("python3", "--name=bob")
    assert todo.description == "runs on here"
    assert dict(todo.env) == {"TOKEN": "s3"}


# -- schema typing -------------------------------------------------------------------


def test_port_from_a_default_is_an_integer() -> None:
    port = parse_config({"server": {"port": "${MCP_PORT|8080}"}}, {}).server.port
    assert port == 8080
    assert type(port) is int


def test_port_from_the_environment_is_an_integer() -> None:
    port = parse_config({"server": {"port": "${MCP_PORT|8080}"}}, {"MCP_PORT": " 9090 "}).server.port
    assert port == 9090
    assert type(port) is int


@pytest.mark.parametrize("raw", ["0123456789", "${PW|0123456789}", "${PW}"])
def test_digit_only_password_stays_a_string(raw: str) -> None:
    server = parse_config({"server": {"auth_password": raw}}, {"PW": "0123456789"}).server
    assert server.auth_password == "0123456789"
    assert type(server.auth_password) is str


def test_digit_only_command_argument_stays_a_string() -> None:
    todo = parse_config(service(command=["prog", "42", "${N|007}"]), {}).services["todo"]
    assert todo.command == ("prog", "42", "007")
    assert all(type(part) is str for part in todo.command)


def test_digit_only_env_value_stays_a_string() -> None:
    todo = parse_config(service(env={"PORT": "0800"}), {}).services["todo"]
    assert todo.env["PORT"] == "0800"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("yes", True),
        ("ON", True),
        ("1", True),
        (" True ", True),
        ("false", False),
        ("no", False),
        ("Off", False),
        ("0", False),
        ("${FLAG|false}", False),
        (True, True),
        (False, False),
    ],
)
def test_booleans_from_strings(raw: Any, expected: bool) -> None:
    todo = parse_config(service(enabled=raw), {}).services["todo"]
    assert todo.enabled is expected


def test_boolean_from_the_environment() -> None:
    sandbox = parse_config(service(sandbox={"enabled": "${SANDBOX|true}"}), {"SANDBOX": "no"}).services["todo"].sandbox
    assert sandbox.level == "none"


def test_numbers_from_strings_and_integers_are_floats() -> None:
    todo = parse_config(service(call_timeout="2.5", handshake_timeout=7, close_grace="${G|3}"), {}).services["todo"]
    assert todo.call_timeout == 2.5
    assert todo.handshake_timeout == 7.0
    assert type(todo.handshake_timeout) is float
    assert todo.close_grace == 3.0


def test_integer_from_a_string() -> None:
    session = parse_config({"session": {"max_total_sessions": "${MAX|12}"}}, {}).session
    assert session.max_total_sessions == 12
    assert type(session.max_total_sessions) is int


def test_defaults() -> None:
    config = parse_config({}, {})
    assert config == GatewayConfig()
    assert config.server.port == 8080
    assert config.server.host == "127.0.0.1"
    assert dict(config.services) == {}
    todo = parse_config(service(), {}).services["todo"]
    assert todo.name == "todo"
    assert todo.sandbox == SandboxPolicy()
    assert todo.sandbox.level == "high"
    assert todo.protocol == "auto"


def test_single_limit_string_is_a_list() -> None:
    limits = parse_config({"rate_limiting": {"default_limits": "10/minute"}}, {}).rate_limiting.default_limits
    assert limits == ("10/minute",)


def test_log_level_is_upper_cased() -> None:
    assert parse_config({"logging": {"level": "warning"}}, {}).logging.level == "WARNING"


def test_protocol_values() -> None:
    for era in ("auto", "legacy", "modern"):
        assert parse_config(service(protocol=era), {}).services["todo"].protocol == era


def test_port_zero_and_max_are_accepted() -> None:
    assert parse_config({"server": {"port": 0}}, {}).server.port == 0
    assert parse_config({"server": {"port": "65535"}}, {}).server.port == 65535


# -- errors name the key path ------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"server": {"port": [8080]}}, "server.port"),
        ({"server": {"port": 80.5}}, "server.port"),
        ({"server": {"port": True}}, "server.port"),
        ({"server": {"host": 127}}, "server.host"),
        ({"server": {"auth_password": 1234}}, "server.auth_password"),
        ({"server": {"max_body_bytes": "lots"}}, "server.max_body_bytes"),
        ({"session": {"max_total_sessions": "many"}}, "session.max_total_sessions"),
        ({"session": {"default_timeout": True}}, "session.default_timeout"),
        ({"session": {"default_timeout": "soon"}}, "session.default_timeout"),
        ({"rate_limiting": {"default_limits": [1]}}, "rate_limiting.default_limits[0]"),
        ({"rate_limiting": {"default_limits": {"a": 1}}}, "rate_limiting.default_limits"),
        ({"rate_limiting": {"enabled": 1}}, "rate_limiting.enabled"),
        ({"logging": {"file": None}}, "logging.file"),
        (service(description=5), "services.todo.description"),
        (service(env={"A": 1}), "services.todo.env.A"),
        (service(env=["A=1"]), "services.todo.env"),
        (service(command=["prog", 5]), "services.todo.command[1]"),
        (service(enabled="maybe"), "services.todo.enabled"),
        (service(enabled=1), "services.todo.enabled"),
        (service(max_line_bytes=1.5), "services.todo.max_line_bytes"),
        (service(protocol="2024"), "services.todo.protocol"),
        (service(sandbox={"enabled": "maybe"}), "services.todo.sandbox.enabled"),
        (service(sandbox_config={"restricted_env": []}), "services.todo.sandbox_config.restricted_env"),
        (service(sandbox=[]), "services.todo.sandbox"),
        ({"server": []}, "server"),
        ({"session": "x"}, "session"),
        ({"services": []}, "services"),
        ({"services": None}, "services"),
        ({"services": {"todo": ["prog"]}}, "services.todo"),
    ],
)
def test_wrong_type_names_the_key_path(raw: Any, path: str) -> None:
    assert config_error(raw).startswith(f"{path}: ")


def test_unknown_service_field() -> None:
    message = config_error(service(bogus=1))
    assert message.startswith("services.todo.bogus: unknown key")
    assert "command" in message  # the known keys are listed


def test_unknown_top_level_key() -> None:
    assert config_error({"bogus": {}}).startswith("bogus: unknown key")


@pytest.mark.parametrize("section", ["server", "session", "rate_limiting", "logging"])
def test_unknown_key_in_a_section(section: str) -> None:
    assert config_error({section: {"bogus": 1}}).startswith(f"{section}.bogus: unknown key")


def test_unknown_sandbox_key() -> None:
    assert config_error(service(sandbox={"bogus": 1})).startswith("services.todo.sandbox.bogus: unknown key")


def test_missing_command() -> None:
    message = config_error({"services": {"todo": {"description": "x"}}})
    assert message.startswith("services.todo.command: missing")


@pytest.mark.parametrize("command", [[], [""], ["${UNSET}"], "prog --flag", None, {"prog": 1}])
def test_empty_or_malformed_command(command: Any) -> None:
    assert config_error(service(command=command)).startswith("services.todo.command: expected a non-empty list")


@pytest.mark.parametrize("name", ["bad name", "", "a" * 65, "x/y", "dot.ted", "ünï"])
def test_invalid_service_name(name: str) -> None:
    message = config_error({"services": {name: {"command": ["prog"]}}})
    assert message.startswith(f"services.{name}: a service name is")


def test_service_name_with_trailing_newline_is_refused() -> None:
    message = config_error({"services": {"todo\n": {"command": ["prog"]}}})
    assert message.startswith("services.todo\n: a service name is")


@pytest.mark.parametrize("name", ["a" * 64, "A-b_9", "x"])
def test_valid_service_names(name: str) -> None:
    assert name in parse_config({"services": {name: {"command": ["prog"]}}}, {}).services


@pytest.mark.parametrize(
    "field",
    [
        "call_timeout",
        "handshake_timeout",
        "discover_timeout",
        "close_grace",
        "backoff_initial",
        "backoff_max",
        "backoff_reset",
        "max_line_bytes",
    ],
)
@pytest.mark.parametrize("value", [0, -1, "0", "-2.5"])
def test_service_timeouts_must_be_positive(field: str, value: Any) -> None:
    if field == "max_line_bytes" and value == "-2.5":
        value = "-2"
    message = config_error(service(**{field: value}))
    assert message.startswith(f"services.todo.{field}: must be greater than zero")


@pytest.mark.parametrize(
    "field", ["default_timeout", "cleanup_interval", "max_sessions_per_service", "max_total_sessions"]
)
@pytest.mark.parametrize("value", [0, -5])
def test_session_values_must_be_positive(field: str, value: int) -> None:
    assert config_error({"session": {field: value}}).startswith(f"session.{field}: must be greater than zero")


def test_server_max_body_bytes_must_be_positive() -> None:
    assert config_error({"server": {"max_body_bytes": 0}}).startswith("server.max_body_bytes: must be greater")


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", "${T|nan}"])
def test_numbers_must_be_finite(value: str) -> None:
    assert config_error(service(call_timeout=value)).startswith("services.todo.call_timeout: expected a finite number")


@pytest.mark.parametrize("port", [-1, 65536, 100000, "http", "", "${MCP_PORT}", "80.0"])
def test_invalid_port(port: Any) -> None:
    assert config_error({"server": {"port": port}}).startswith("server.port: ")


@pytest.mark.parametrize("level", ["LOUD", "", "trace", 10])
def test_invalid_log_level(level: Any) -> None:
    assert config_error({"logging": {"level": level}}).startswith("logging.level: ")


def test_configuration_must_be_an_object() -> None:
    assert "must be a JSON object" in config_error([{"server": {}}])
    assert "must be a JSON object" in config_error(None)


# -- sandbox_config alias ------------------------------------------------------------------


def test_sandbox_config_is_an_alias_of_sandbox() -> None:
    raw = service(sandbox_config={"enabled": False, "working_dir": "/srv/todo"})
    sandbox = parse_config(raw, {}).services["todo"].sandbox
    assert sandbox == SandboxPolicy(level="none", limits=None, working_dir="/srv/todo")


def test_sandbox_and_sandbox_config_together_are_refused() -> None:
    message = config_error(service(sandbox={"enabled": False}, sandbox_config={"enabled": True}))
    assert message.startswith("services.todo.sandbox_config: given twice")


# -- MCPGATEWAY_PYTHON ------------------------------------------------------------------------


def test_mcpgateway_python_defaults_to_the_gateway_interpreter() -> None:
    todo = parse_config(service(command=["${MCPGATEWAY_PYTHON}", "-m", "x"]), {}).services["todo"]
    assert todo.command[0] == sys.executable


def test_mcpgateway_python_can_be_overridden() -> None:
    todo = parse_config(service(command=["${MCPGATEWAY_PYTHON}"]), {"MCPGATEWAY_PYTHON": "/opt/py"}).services["todo"]
    assert todo.command == ("/opt/py",)


def test_environ_none_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPGW_TEST_HOST", "10.1.2.3")
    monkeypatch.delenv("MCPGATEWAY_PYTHON", raising=False)
    config = parse_config({"server": {"host": "${MCPGW_TEST_HOST|x}"}, **service(command=["${MCPGATEWAY_PYTHON}"])})
    assert config.server.host == "10.1.2.3"
    assert config.services["todo"].command == (sys.executable,)


# -- load_config ----------------------------------------------------------------------------


def write(path: Path, content: Any) -> str:
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return str(path)


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.json")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value).startswith(f"{path}: cannot read the configuration file")
    assert "No such file" in str(info.value)


def test_load_config_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path), {})
    assert str(info.value).startswith(f"{tmp_path}: cannot read the configuration file")


@pytest.mark.parametrize("content", [b"{", b"", b"{'a': 1}", b'{"a": 1,}', b"\xff\xfe{}"])
def test_load_config_invalid_json(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path / "c.json", content)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value).startswith(f"{path}: not valid JSON")


@pytest.mark.parametrize("content", [[], "text", 3, None])
def test_load_config_non_object_json(tmp_path: Path, content: Any) -> None:
    path = write(tmp_path / "c.json", content)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value).startswith(f"{path}: the configuration must be a JSON object")


def test_load_config_schema_error_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", service(command=["prog", 1]))
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value).startswith(f"{path}: services.todo.command[1]: expected a string")


def test_load_config_uses_environ(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", {"server": {"port": "${P|1}"}})
    assert load_config(path, {"P": "4242"}).server.port == 4242


def test_shipped_config_loads() -> None:
    config = load_config(str(SHIPPED), {})
    assert config.server.port == 8080
    assert config.server.host == "127.0.0.1"
    assert config.server.auth_user == "admin"
    assert config.server.auth_token == ""
    assert list(config.services) == ["todo"]
    todo = config.services["todo"]
    assert todo.command == (sys.executable, "-m", "mcpgateway.examples.todo_server")
    assert todo.enabled is True
    assert config.session.default_timeout == 300.0
    assert config.logging.level == "INFO"


def test_shipped_config_reads_the_environment() -> None:
    config = load_config(str(SHIPPED), {"MCP_PORT": "9999", "MCP_AUTH_PASSWORD": "0000"})
    assert config.server.port == 9999
    assert config.server.auth_password == "0000"


# -- twistd options ---------------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Callable[..., str]:
    """
    Write a configuration with a sandbox under C{tmp_path}; returns its path.
    """

    def make(**sections: Any) -> str:
        raw = {
            "server": {"auth_user": "u", "auth_password": "0123", "port": 0},
            "services": {"todo": {"command": [sys.executable, "-c", "pass"]}},
            "session": {"sandbox_dir": str(tmp_path / "sandbox")},
            **sections,
        }
        return write(tmp_path / "config.json", raw)

    return make


def test_options_require_config() -> None:
    with pytest.raises(usage.UsageError) as info:
        Options().parseOptions([])
    assert "--config" in str(info.value)


def test_options_bad_config_names_the_key_path(config_file: Callable[..., str]) -> None:
    path = config_file(services={"todo": {"command": []}})
    with pytest.raises(StartRefused) as info:
        Options().parseOptions(["--config", path])
    assert "services.todo.command" in str(info.value)
    assert path in str(info.value)


def test_options_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.json")
    with pytest.raises(StartRefused) as info:
        Options().parseOptions(["-c", path])
    assert path in str(info.value)


@pytest.mark.parametrize(
    "server",
    [{}, {"auth_user": "u"}, {"auth_password": "p"}, {"auth_user": "u", "auth_password": "${UNSET_PW_X}"}],
)
def test_options_refuse_config_without_credentials(
    config_file: Callable[..., str], server: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UNSET_PW_X", raising=False)
    path = config_file(server=server)
    with pytest.raises(StartRefused) as info:
        Options().parseOptions(["--config", path])
    assert "set auth_user and auth_password, auth_token, or principals" in str(info.value)


def test_options_accept_a_token_alone(config_file: Callable[..., str]) -> None:
    options = Options()
    options.parseOptions(["--config", config_file(server={"auth_token": "tok"})])
    assert isinstance(options["gateway_config"], GatewayConfig)
    assert options["gateway_config"].server.auth_token == "tok"


def _child_pids() -> set[int]:
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found.add(int(entry))
    return found


def test_make_service_builds_but_starts_nothing(config_file: Callable[..., str], tmp_path: Path) -> None:
    before = _child_pids()
    options = Options()
    options.parseOptions(["--config", config_file()])
    top = makeService(options)
    assert isinstance(top, MultiService)
    children = list(top)
    assert len(children) == 2
    assert not top.running
    assert not any(child.running for child in children)
    gateway_service = children[0]
    assert isinstance(gateway_service, GatewayService)
    gateway = gateway_service.gateway
    assert set(gateway.services) == {"todo"}
    assert all(not s.children and s.spawns == 0 for s in gateway.services.values())
    assert not gateway._reaper.running
    assert len(gateway.sessions) == 0
    web = children[1]
    assert getattr(web, "_waitingForPort", None) is None  # never asked to listen
    assert not (tmp_path / "sandbox").exists()
    assert _child_pids() <= before


def test_listening_service_picks_tcp_tcp6_or_tls(tmp_path: Path) -> None:
    from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint

    from mcpgateway.devcert import make_certificate
    from mcpgateway.http.tls import load_tls

    site = object()
    config = parse_config({"server": {"host": "127.0.0.1", "port": 8123}}, {})
    plain = listening_service(config, None, site)  # type: ignore[arg-type]
    assert isinstance(plain.endpoint, TCP4ServerEndpoint)
    assert plain.endpoint._port == 8123
    ipv6 = parse_config({"server": {"host": "::1", "port": 80}}, {})
    assert isinstance(listening_service(ipv6, None, site).endpoint, TCP6ServerEndpoint)  # type: ignore[arg-type]
    pem = tmp_path / "server.pem"
    pem.write_bytes(make_certificate(["localhost"]))
    tls = listening_service(config, load_tls(str(pem)), site)  # type: ignore[arg-type]
    assert isinstance(tls.endpoint, SSL4ServerEndpoint)


@pytest.mark.parametrize(
    ("server", "refused"),
    [
        ({"host": "0.0.0.0", "auth_user": "admin", "auth_password": "changeme"}, "placeholder password"),
        ({"host": "0.0.0.0", "auth_user": "admin", "auth_password": "CHANGEME"}, "placeholder password"),
        ({"host": "192.0.2.1", "auth_user": "admin", "auth_password": "", "auth_token": "t"}, "empty auth_user"),
        ({"host": "::", "auth_user": "", "auth_password": "p", "auth_token": "t"}, "empty auth_user"),
        ({"host": "0.0.0.0", "auth_user": "admin", "auth_password": "a-real-secret"}, None),
        ({"host": "0.0.0.0", "auth_token": "t0ken"}, None),
        ({"host": "127.0.0.1", "auth_user": "admin", "auth_password": "changeme"}, None),
        ({"host": "localhost", "auth_user": "admin", "auth_password": "changeme"}, None),
        ({"host": "::1", "auth_user": "admin", "auth_password": "changeme"}, None),
    ],
)
def test_non_loopback_refuses_placeholder_and_empty_credentials(
    config_file: Callable[..., str], server: dict[str, str], refused: str | None
) -> None:
    path = config_file(server=server)
    if refused is None:
        Options().parseOptions(["--config", path])
        return
    with pytest.raises(StartRefused) as info:
        Options().parseOptions(["--config", path])
    assert refused in str(info.value)


def test_child_dir_is_left_for_the_sandbox_to_fill() -> None:
    config = parse_config(
        {"services": {"mem": {"command": ["x"], "env": {"MEMORY_FILE_PATH": "${MCPGATEWAY_CHILD_DIR}/m.jsonl"}}}},
        {"MCPGATEWAY_CHILD_DIR": "/not/this"},
    )
    assert config.services["mem"].env["MEMORY_FILE_PATH"] == "${MCPGATEWAY_CHILD_DIR}/m.jsonl"
    assert substitute("${MCPGATEWAY_CHILD_DIR|x}", {}) == "x"  # only the exact name is kept


def test_first_start_timeout_is_longer_only_for_downloaders() -> None:
    config = parse_config(
        {
            "services": {
                "npx": {"command": ["/usr/bin/npx", "-y", "@scope/server"]},
                "py": {"command": ["python3", "server.py"], "handshake_timeout": 5},
                "given": {"command": ["python3", "server.py"], "startup_timeout": 300},
            }
        }
    )
    assert config.services["npx"].first_start_timeout() == 120
    assert config.services["py"].first_start_timeout() == 5
    assert config.services["given"].first_start_timeout() == 300


def test_session_drain_timeout() -> None:
    assert parse_config({}).session.drain_timeout == 30.0
    assert parse_config({"session": {"drain_timeout": 0}}).session.drain_timeout == 0.0
    assert parse_config({"session": {"drain_timeout": "${T|2.5}"}}).session.drain_timeout == 2.5
    message = config_error({"session": {"drain_timeout": -1}})
    assert message.startswith("session.drain_timeout: must not be negative"), message
    message = config_error({"session": {"drain_timeout": "soon"}})
    assert message.startswith("session.drain_timeout: expected a number"), message
