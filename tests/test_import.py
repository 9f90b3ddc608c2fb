"""
MCP client configurations as gateway services: the conversion
(L{mcpgateway.config.claude}), a gateway configuration's own C{mcpServers}
block (L{mcpgateway.config.services}) and C{mcp-gateway import}
(L{mcpgateway.importer}, run as a real subprocess on real files).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mcpgateway.config import ConfigError, load_config, parse_config
from mcpgateway.config.claude import Note, convert_servers, import_servers

ROOT = Path(__file__).parent.parent

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
    ("entry", "service"),
    [
        ({"url": "https://example.com/mcp"}, {"url": "https://example.com/mcp"}),
        ({"serverUrl": "https://example.com/mcp"}, {"url": "https://example.com/mcp"}),
        (
            {"httpUrl": "https://example.com/mcp"},
            {"url": "https://example.com/mcp", "transport": "streamable-http"},
        ),
        (
            {"type": "http", "url": "https://example.com/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"}},
            {
                "url": "https://example.com/mcp",
                "transport": "streamable-http",
                "headers": {"Authorization": "Bearer ${TOKEN}"},
            },
        ),
        (
            {"type": "sse", "url": "https://example.com/sse", "disabled": True},
            {"url": "https://example.com/sse", "transport": "sse", "enabled": False},
        ),
    ],
)
def test_remote_servers_become_url_services_that_load(entry: dict[str, Any], service: dict[str, Any]) -> None:
    imported = import_servers({"mcpServers": {"remote": entry, "local": {"command": "x"}}})
    assert imported.services == {"remote": service, "local": {"command": ["x"]}}
    assert imported.notes == ()
    config = parse_config({"services": imported.services}, {"TOKEN": "t0ken-value"})
    remote = config.services["remote"]
    assert (remote.url, remote.transport) == (service["url"], service.get("transport", "auto"))
    assert dict(remote.headers) == ({"Authorization": "Bearer t0ken-value"} if "headers" in service else {})


def test_remote_server_fields_without_an_equivalent_are_noted() -> None:
    entry = {"type": "http", "url": "https://example.com/mcp", "oauth": {"clientId": "x"}, "command": "x"}
    imported = import_servers({"mcpServers": {"web": entry}})
    assert imported.services == {"web": {"url": "https://example.com/mcp", "transport": "streamable-http"}}
    assert lines(imported.notes) == [
        "note: services.web: field 'command' not mapped (a remote server runs no program)",
        "note: services.web: field 'oauth' not mapped (the gateway sends configured headers; "
        "give a token in headers or a secrets block)",
    ]


def test_a_transport_the_gateway_does_not_speak_is_skipped_with_the_reason() -> None:
    imported = import_servers(
        {"mcpServers": {"ws": {"type": "ws", "url": "wss://example.com"}, "local": {"command": "x"}}}
    )
    assert imported.services == {"local": {"command": ["x"]}}
    assert lines(imported.notes) == [
        "note: mcpServers.ws: skipped: type 'ws' is not a transport the gateway speaks (stdio, http, sse)"
    ]
    assert imported.notes[0].target == ""


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"type": "http"}, "mcpServers.web.url: missing (the server's address)"),
        (
            {"url": "https://a/mcp", "httpUrl": "https://b/mcp"},
            "mcpServers.web: both 'url' and 'httpUrl': give one URL",
        ),
        ({"url": ["https://a/mcp"]}, "mcpServers.web.url: expected a string, got a list"),
        ({"url": "https://a/mcp", "headers": ["x"]}, "mcpServers.web.headers: expected an object of strings"),
        ({"type": 1, "url": "https://a/mcp"}, "mcpServers.web.type: expected a string"),
    ],
)
def test_bad_remote_entries_name_the_key_path(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        import_servers({"mcpServers": {"web": entry}})
    assert str(raised.value).startswith(message)


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
            {"mcpServers": {"web": {"type": "ws", "url": "wss://example.com"}}},
            "mcpServers.web: type 'ws' is not a transport the gateway speaks (stdio, http, sse)",
        ),
        (
            {"mcpServers": {"web": {"url": "https://example.com/mcp", "oauth": {}}}},
            "mcpServers.web.oauth: field 'oauth' not mapped",
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


# -- mcp-gateway import ------------------------------------------------------------------


def run(*arguments: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """
    Run C{mcp-gateway import ARGUMENTS} in a subprocess, this checkout first on C{PYTHONPATH}.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", "from mcpgateway.cli import main; main()", "import", *map(str, arguments)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_json(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_import_prints_a_configuration_that_loads(tmp_path: Path) -> None:
    source = write_json(tmp_path / "claude_desktop_config.json", CLAUDE_DESKTOP)
    result = run(source, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == json.dumps({"services": CLAUDE_DESKTOP_SERVICES}, indent=2) + "\n"
    printed = tmp_path / "config.json"
    printed.write_text(result.stdout, encoding="utf-8")
    config = load_config(str(printed), {"TIME_KEY": "k"})
    assert config.services["time"].command == ("uvx", "mcp-server-time")
    assert config.services["time"].env == {"TZ": "Europe/Paris", "KEY": "k"}


def test_import_reports_notes_on_stderr_and_exits_zero(tmp_path: Path) -> None:
    document = {
        "mcpServers": {
            "time": {"command": "uvx", "args": ["mcp-server-time"], "autoApprove": ["get_current_time"]},
            "my tools": {"command": "tools"},
            "web": {"type": "ws", "url": "wss://example.com/mcp"},
        }
    }
    result = run(write_json(tmp_path / ".mcp.json", document), cwd=tmp_path)
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        "note: services.time: field 'autoApprove' not mapped (the gateway does not ask before a tool call)",
        "note: services.my_tools: renamed from 'my tools' (a service name is 1-64 of A-Z a-z 0-9 _ -)",
        "note: mcpServers.web: skipped: type 'ws' is not a transport the gateway speaks (stdio, http, sse)",
    ]
    assert json.loads(result.stdout) == {
        "services": {"time": {"command": ["uvx", "mcp-server-time"]}, "my_tools": {"command": ["tools"]}}
    }


def test_import_reads_vscode_json_with_comments(tmp_path: Path) -> None:
    source = tmp_path / "mcp.json"
    source.write_text(
        """{
  // VS Code writes JSON with comments
  "servers": {
    "time": {
      "type": "stdio", /* the only kind the gateway runs */
      "command": "uvx",
      "args": ["mcp-server-time", "--url=http://x//y", "a,}"],
    },
  },
}""",
        encoding="utf-8",
    )
    result = run(source, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads(result.stdout) == {
        "services": {"time": {"command": ["uvx", "mcp-server-time", "--url=http://x//y", "a,}"]}}
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read: No such file or directory"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"preferences": {}}', "no mcpServers or servers object"),
        (b'{"mcpServers": {"x": {"command": "x", "args": "-y"}}}', "mcpServers.x.args: expected a list of strings"),
    ],
)
def test_import_unusable_input_exits_2(tmp_path: Path, content: bytes | None, message: str) -> None:
    source = tmp_path / "client.json"
    if content is not None:
        source.write_bytes(content)
    result = run(source, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"mcp-gateway import: {source}: {message}")


def gateway_config(path: Path, mode: int = 0o640) -> Path:
    """
    A copy of the shipped configuration (its todo service), with C{mode}.
    """
    path.write_text((ROOT / "config" / "config.json").read_text(encoding="utf-8"), encoding="utf-8")
    path.chmod(mode)
    return path


def test_import_into_merges_and_keeps_the_mode(tmp_path: Path) -> None:
    target = gateway_config(tmp_path / "config.json")
    before = json.loads(target.read_text(encoding="utf-8"))
    result = run(write_json(tmp_path / "c.json", CLAUDE_DESKTOP), "--into", target, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    after = json.loads(target.read_text(encoding="utf-8"))
    assert after == {**before, "services": {**before["services"], **CLAUDE_DESKTOP_SERVICES}}
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert list(load_config(str(target), {}).services) == ["todo", "filesystem", "time"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["c.json", "config.json"]


def test_import_into_refuses_a_taken_name(tmp_path: Path) -> None:
    target = gateway_config(tmp_path / "config.json")
    before = target.read_bytes()
    source = write_json(tmp_path / "c.json", {"mcpServers": {"todo": {"command": "other-todo"}}})
    result = run(source, "--into", target, cwd=tmp_path)
    assert result.returncode == 1
    assert (
        result.stderr
        == f"mcp-gateway import: {target}: already has todo: rename them in the imported file, or give --replace\n"
    )
    assert target.read_bytes() == before


def test_import_into_replace(tmp_path: Path) -> None:
    target = gateway_config(tmp_path / "config.json")
    source = write_json(tmp_path / "c.json", {"mcpServers": {"todo": {"command": "other-todo"}}})
    result = run(source, "--into", target, "--replace", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert load_config(str(target), {}).services["todo"].command == ("other-todo",)


def test_import_into_replace_takes_the_name_out_of_mcp_servers(tmp_path: Path) -> None:
    target = write_json(
        tmp_path / "config.json", {"mcpServers": {"time": {"command": "old"}, "keep": {"command": "k"}}}
    )
    source = write_json(tmp_path / "c.json", CLAUDE_DESKTOP)
    assert run(source, "--into", target, cwd=tmp_path).returncode == 1
    result = run(source, "--into", target, "--replace", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads(target.read_text(encoding="utf-8"))["mcpServers"] == {"keep": {"command": "k"}}
    config = load_config(str(target), {})
    assert config.services["time"].command == ("uvx", "mcp-server-time")
    assert config.services["keep"].command == ("k",)


def test_import_into_a_file_that_is_not_a_configuration_exits_2(tmp_path: Path) -> None:
    source = write_json(tmp_path / "c.json", CLAUDE_DESKTOP)
    target = write_json(tmp_path / "config.json", {"services": []})
    result = run(source, "--into", target, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"mcp-gateway import: {target}: services: expected an object, got a list\n"
    assert run(source, "--into", tmp_path / "missing.json", cwd=tmp_path).returncode == 2


def test_import_output_writes_a_new_private_file(tmp_path: Path) -> None:
    output = tmp_path / "gateway.json"
    result = run(write_json(tmp_path / "c.json", CLAUDE_DESKTOP), "--output", output, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    # env values are often secrets (API keys)
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert json.loads(output.read_text(encoding="utf-8")) == {"services": CLAUDE_DESKTOP_SERVICES}


def test_import_into_with_output_leaves_the_configuration_alone(tmp_path: Path) -> None:
    target = gateway_config(tmp_path / "config.json")
    before = target.read_bytes()
    output = tmp_path / "merged.json"
    result = run(write_json(tmp_path / "c.json", CLAUDE_DESKTOP), "--into", target, "--output", output, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert target.read_bytes() == before
    assert list(load_config(str(output), {}).services) == ["todo", "filesystem", "time"]


def test_import_end_to_end_todo_server(tmp_path: Path) -> None:
    """
    A client's entry for the gateway's own example server, imported by the
    command and loaded by the gateway, runs exactly that command.
    """
    document = {"mcpServers": {"todo": {"command": sys.executable, "args": ["-m", "mcpgateway.examples.todo_server"]}}}
    result = run(write_json(tmp_path / "claude_desktop_config.json", document), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    config = parse_config(json.loads(result.stdout), {})
    assert config.services["todo"].command == (sys.executable, "-m", "mcpgateway.examples.todo_server")
