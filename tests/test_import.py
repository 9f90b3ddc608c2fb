"""
MCP client configurations as gateway services: the conversion
(L{mcpgateway.config.claude}), a gateway configuration's own C{mcpServers}
block (L{mcpgateway.config.schema}) and C{mcp-gateway import}
(L{mcpgateway.importer}, run as a real subprocess on real files).
"""

from __future__ import annotations

from typing import Any

import pytest

from mcpgateway.config import ConfigError, parse_config
from mcpgateway.config.claude import Note, convert_servers, import_servers

#: Claude Desktop's example: two servers, one with env.
CLAUDE_DESKTOP = {
    "mcpServers": {
        "filesystem": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]},
        "time": {"command": "uvx", "args": ["mcp-server-time"], "env": {"TZ": "Europe/Paris", "KEY": "${TIME_KEY}"}},
    }
}
CLAUDE_DESKTOP_SERVICES = {
    "filesystem": {"command": ["npx", "-y", "@modelcontextprotocol/server-filesystem", "/tmp"]},
    "time": {"command": ["uvx", "mcp-server-time"], "env": {"TZ": "Europe/Paris", "KEY": "${TIME_KEY}"}},
}


def lines(notes: tuple[Note, ...]) -> list[str]:
    return [str(note) for note in notes]


def import_error(document: Any) -> str:
    """
    @return: The message of the L{ConfigError} that importing C{document} raises.
    """
    with pytest.raises(ConfigError) as info:
        import_servers(document)
    return str(info.value)


# -- the conversion ----------------------------------------------------------------


def test_claude_desktop_maps_command_args_and_env() -> None:
    imported = import_servers(CLAUDE_DESKTOP)
    assert imported.services == CLAUDE_DESKTOP_SERVICES
    assert imported.notes == ()


def test_claude_desktop_result_is_a_gateway_configuration() -> None:
    config = parse_config({"services": import_servers(CLAUDE_DESKTOP).services}, {"TIME_KEY": "k"})
    assert config.services["filesystem"].command == ("npx", "-y", "@modelcontextprotocol/server-filesystem", "/tmp")
    assert config.services["time"].env == {"TZ": "Europe/Paris", "KEY": "k"}
    assert config.services["time"].enabled


def test_vscode_servers() -> None:
    document = {
        "servers": {
            "github": {
                "type": "stdio",
                "command": "docker",
                "args": ["run", "-i", "--rm", "ghcr.io/github/github-mcp-server"],
                "env": {"GITHUB_TOKEN": "${GITHUB_TOKEN}"},
                "cwd": "/srv/github",
                "envFile": "/srv/github/.env",
            }
        }
    }
    imported = import_servers(document)
    assert imported.services == {
        "github": {
            "command": ["docker", "run", "-i", "--rm", "ghcr.io/github/github-mcp-server"],
            "env": {"GITHUB_TOKEN": "${GITHUB_TOKEN}"},
            "sandbox": {"working_dir": "/srv/github"},
        }
    }
    assert lines(imported.notes) == [
        "note: services.github: field 'envFile' not mapped "
        "(the gateway reads no env files: copy its variables into env)"
    ]
    service = parse_config({"services": imported.services}, {"GITHUB_TOKEN": "t"}).services["github"]
    assert service.sandbox.working_dir == "/srv/github"
    assert service.env == {"GITHUB_TOKEN": "t"}


def test_vscode_settings_json_nesting() -> None:
    document = {
        "editor.fontSize": 14,
        "mcp": {
            "inputs": [{"type": "promptString", "id": "key"}],
            "servers": {"time": {"command": "uvx", "args": ["mcp-server-time"]}},
        },
    }
    imported = import_servers(document)
    assert imported.services == {"time": {"command": ["uvx", "mcp-server-time"]}}
    # The editor's own settings are not part of the server list; VS Code's inputs are.
    assert lines(imported.notes) == ["note: mcp.inputs: skipped: not a list of MCP servers, not read"]


def test_claude_code_mcp_json_keeps_variables_unchanged() -> None:
    document = {
        "mcpServers": {
            "api": {"command": "${TOOLS|/opt/tools}/api-server", "args": ["--port", "${PORT}"], "env": {"A": "${A}"}}
        }
    }
    imported = import_servers(document)
    assert imported.services == {
        "api": {"command": ["${TOOLS|/opt/tools}/api-server", "--port", "${PORT}"], "env": {"A": "${A}"}}
    }
    assert imported.notes == ()
    service = parse_config({"services": imported.services}, {"PORT": "9000", "A": "a"}).services["api"]
    assert service.command == ("/opt/tools/api-server", "--port", "9000")


def test_disabled_becomes_enabled_false_and_description_is_kept() -> None:
    imported = import_servers(
        {"mcpServers": {"off": {"command": "x", "disabled": True, "description": "d"}, "on": {"command": "y"}}}
    )
    assert imported.services == {
        "off": {"command": ["x"], "description": "d", "enabled": False},
        "on": {"command": ["y"]},
    }
    config = parse_config({"services": imported.services}, {})
    assert not config.services["off"].enabled
    assert config.services["off"].description == "d"


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ({"url": "https://example.com/mcp"}, "url"),
        ({"type": "http", "url": "https://example.com/mcp", "headers": {"Authorization": "Bearer x"}}, "type 'http'"),
        ({"type": "sse", "url": "https://example.com/sse"}, "type 'sse'"),
        ({"serverUrl": "https://example.com/mcp"}, "serverUrl"),
    ],
)
def test_remote_servers_are_skipped_with_the_reason(entry: dict[str, Any], why: str) -> None:
    imported = import_servers({"mcpServers": {"remote": entry, "local": {"command": "x"}}})
    assert imported.services == {"local": {"command": ["x"]}}
    assert lines(imported.notes) == [
        f"note: mcpServers.remote: skipped: remote servers are not supported yet ({why}; "
        "the gateway runs stdio servers)"
    ]
    assert imported.notes[0].target == ""


def test_unknown_fields_are_reported_never_dropped() -> None:
    entry = {
        "command": "x",
        "autoApprove": ["read"],
        "alwaysAllow": ["read"],
        "timeout": 60,
        "transport": "stdio",
        "somethingNew": True,
    }
    imported = import_servers({"mcpServers": {"x": entry}})
    assert imported.services == {"x": {"command": ["x"]}}
    assert lines(imported.notes) == [
        "note: services.x: field 'autoApprove' not mapped (the gateway does not ask before a tool call)",
        "note: services.x: field 'alwaysAllow' not mapped (the gateway does not ask before a tool call)",
        "note: services.x: field 'timeout' not mapped (set the service's call_timeout (seconds) instead)",
        "note: services.x: field 'transport' not mapped (the gateway talks to its children over stdio only)",
        "note: services.x: field 'somethingNew' not mapped (no gateway equivalent)",
    ]
    assert [note.source for note in imported.notes] == [
        "mcpServers.x.autoApprove",
        "mcpServers.x.alwaysAllow",
        "mcpServers.x.timeout",
        "mcpServers.x.transport",
        "mcpServers.x.somethingNew",
    ]


def test_other_top_level_keys_are_reported() -> None:
    imported = import_servers({"globalShortcut": "Ctrl+Space", **CLAUDE_DESKTOP})
    assert imported.services == CLAUDE_DESKTOP_SERVICES
    assert lines(imported.notes) == ["note: globalShortcut: skipped: not a list of MCP servers, not read"]


def test_invalid_names_are_renamed_deterministically() -> None:
    long = "s" * 70
    servers = {
        "my server": {"command": "a"},
        "my_server": {"command": "b"},
        "café.io": {"command": "c"},
        long: {"command": "d"},
        "": {"command": "e"},
    }
    imported = import_servers({"mcpServers": servers})
    # The valid name keeps its name; the invalid one that would become it gets a suffix.
    assert imported.services == {
        "my_server_2": {"command": ["a"]},
        "my_server": {"command": ["b"]},
        "caf__io": {"command": ["c"]},
        "s" * 64: {"command": ["d"]},
        "server": {"command": ["e"]},
    }
    rule = "(a service name is 1-64 of A-Z a-z 0-9 _ -)"
    assert lines(imported.notes) == [
        f"note: services.my_server_2: renamed from 'my server' {rule}",
        f"note: services.caf__io: renamed from 'café.io' {rule}",
        f"note: services.{'s' * 64}: renamed from '{long}' {rule}",
        f"note: services.server: renamed from '' {rule}",
    ]
    assert import_servers({"mcpServers": servers}) == imported
    assert set(parse_config({"services": imported.services}, {}).services) == set(imported.services)


def test_a_name_in_both_blocks_is_renamed() -> None:
    imported = import_servers({"mcpServers": {"x": {"command": "a"}}, "servers": {"x": {"command": "b"}}})
    assert imported.services == {"x": {"command": ["a"]}, "x_2": {"command": ["b"]}}
    assert lines(imported.notes) == ["note: services.x_2: renamed from 'x' (the name is taken)"]


@pytest.mark.parametrize(
    ("value", "variable"),
    [
        ("${workspaceFolder}/data", "${workspaceFolder}"),
        ("${env:HOME}/data", "${env:HOME}"),
        ("${input:api-key}", "${input:api-key}"),
        ("${HOME:-/root}", "${HOME:-/root}"),
    ],
)
def test_client_variables_are_reported(value: str, variable: str) -> None:
    imported = import_servers({"servers": {"x": {"command": "x", "args": ["--dir", value], "env": {"K": value}}}})
    assert imported.services == {"x": {"command": ["x", "--dir", value], "env": {"K": value}}}
    assert [(note.source, note.target) for note in imported.notes] == [
        ("servers.x.args[1]", "services.x.command[2]"),
        ("servers.x.env.K", "services.x.env.K"),
    ]
    assert all(f"{variable!r} is the client's variable" in note.message for note in imported.notes)


def test_gateway_variables_are_not_reported() -> None:
    imported = import_servers({"mcpServers": {"x": {"command": "${BIN|x}", "args": ["${A|a:b}", "${B}"]}}})
    assert imported.notes == ()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "expected a JSON object, got a list"),
        ({"preferences": {}}, "no mcpServers or servers object"),
        ({"mcp": {"inputs": []}}, "no mcpServers or servers object"),
        ({"mcpServers": []}, "mcpServers: expected an object keyed by server name, got a list"),
        ({"mcpServers": {"x": "npx"}}, "mcpServers.x: expected an object, got a string"),
        ({"mcpServers": {"x": {"args": []}}}, "mcpServers.x.command: missing (the program to run)"),
        ({"mcpServers": {"x": {"command": ""}}}, "mcpServers.x.command: empty"),
        ({"mcpServers": {"x": {"command": ["npx"]}}}, "mcpServers.x.command: expected a string, got a list"),
        ({"mcpServers": {"x": {"command": "x", "args": "-y"}}}, "mcpServers.x.args: expected a list of strings"),
        ({"mcpServers": {"x": {"command": "x", "args": ["-p", 80]}}}, "mcpServers.x.args[1]: expected a string"),
        ({"mcpServers": {"x": {"command": "x", "env": {"N": 1}}}}, "mcpServers.x.env.N: expected a string"),
        ({"mcpServers": {"x": {"command": "x", "env": []}}}, "mcpServers.x.env: expected an object of strings"),
        ({"mcpServers": {"x": {"command": "x", "cwd": 1}}}, "mcpServers.x.cwd: expected a string"),
        ({"mcpServers": {"x": {"command": "x", "disabled": "yes"}}}, "mcpServers.x.disabled: expected true or false"),
        ({"servers": {"x": {"command": "x", "type": 1}}}, "servers.x.type: expected a string"),
    ],
)
def test_unusable_input_names_the_key_path(document: Any, message: str) -> None:
    assert import_error(document).startswith(message)


def test_convert_servers_strict_raises_the_first_note() -> None:
    with pytest.raises(ConfigError, match=r"^mcpServers\.x\.autoApprove: field 'autoApprove' not mapped"):
        convert_servers({"x": {"command": "x", "autoApprove": []}}, "mcpServers", strict=True)


# -- mcpServers in a gateway configuration --------------------------------------------


def config_error(raw: Any) -> str:
    """
    @return: The message of the L{ConfigError} that C{parse_config} raises for C{raw}.
    """
    with pytest.raises(ConfigError) as info:
        parse_config(raw, {})
    return str(info.value)


def test_config_may_hold_mcp_servers() -> None:
    raw = {
        "services": {"todo": {"command": ["prog"]}},
        **CLAUDE_DESKTOP,
    }
    config = parse_config(raw, {"TIME_KEY": "k"})
    assert list(config.services) == ["todo", "filesystem", "time"]
    assert config.services["filesystem"].command == ("npx", "-y", "@modelcontextprotocol/server-filesystem", "/tmp")
    assert config.services["time"].env == {"TZ": "Europe/Paris", "KEY": "k"}


def test_config_mcp_servers_cwd_and_disabled() -> None:
    raw = {"mcpServers": {"x": {"command": "x", "cwd": "${DIR|/srv}", "disabled": True}}}
    service = parse_config(raw, {}).services["x"]
    assert service.sandbox.working_dir == "/srv"
    assert not service.enabled


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"services": {"todo": {"command": ["a"]}}, "mcpServers": {"todo": {"command": "b"}}},
            "mcpServers.todo: also defined in services",
        ),
        (
            {"mcpServers": {"todo": {"command": "b", "autoApprove": ["x"]}}},
            "mcpServers.todo.autoApprove: field 'autoApprove' not mapped (the gateway does not ask before a tool call)",
        ),
        (
            {"mcpServers": {"web": {"url": "https://example.com/mcp"}}},
            "mcpServers.web: remote servers are not supported yet (url; the gateway runs stdio servers)",
        ),
        (
            {"mcpServers": {"web": {"type": "sse", "url": "https://example.com/sse"}}},
            "mcpServers.web: remote servers are not supported yet (type 'sse'; the gateway runs stdio servers)",
        ),
        ({"mcpServers": {"my server": {"command": "b"}}}, "mcpServers.my server: a service name is 1-64"),
        ({"mcpServers": {"x": {"command": "x", "args": "-y"}}}, "mcpServers.x.args: expected a list of strings"),
        (
            {"mcpServers": {"x": {"command": "x", "cwd": "${workspaceFolder}"}}},
            "mcpServers.x.cwd: '${workspaceFolder}'",
        ),
        ({"mcpServers": ["x"]}, "mcpServers: expected an object keyed by server name, got a list"),
    ],
)
def test_config_mcp_servers_errors_name_the_key_path(raw: Any, message: str) -> None:
    assert config_error(raw).startswith(message)
