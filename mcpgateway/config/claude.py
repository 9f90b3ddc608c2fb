"""
MCP client configurations as gateway C{services} entries.

Claude Desktop, Cursor and Claude Code's C{.mcp.json} list their servers as
C{{"mcpServers": {name: {"command", "args", "env", "cwd"}}}}; VS Code as
C{{"servers": {name: {"type": "stdio", ...}}}} in C{mcp.json}, or under
C{"mcp"} in its C{settings.json}.  L{import_servers} reads such a document
and L{convert_servers} one such block (also the C{mcpServers} block a gateway
configuration may hold).

C{command} and C{args} become the gateway's C{command} list, C{env} its
C{env}, C{cwd} its C{sandbox.working_dir}, C{disabled: true} C{enabled:
false} and C{description} its C{description}.  A remote server (C{url},
C{serverUrl} or C{httpUrl}, or C{type} C{http}/C{sse}) becomes a C{url}
service: its C{type} the C{transport}, its C{headers} the C{headers}.  Values
are copied as written: C{${VAR}} is substituted by the gateway when it loads
its configuration.  Everything else is a L{Note}, never dropped silently: a
field with no gateway equivalent, a name that is not a service name
(renamed), a variable of the client's own syntax.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mcpgateway.config.values import ConfigError, kind
from mcpgateway.names import SERVICE_NAME

__all__ = ["Imported", "Note", "convert_servers", "import_servers"]

#: Why a client field has no gateway equivalent; any other field: L{_NO_EQUIVALENT}.
_NOT_MAPPED = {
    "envFile": "the gateway reads no env files: copy its variables into env",
    "autoApprove": "the gateway does not ask before a tool call",
    "alwaysAllow": "the gateway does not ask before a tool call",
    "disabledTools": "the gateway serves every tool of a service",
    "timeout": "set the service's call_timeout (seconds) instead",
    "transport": "the gateway talks to its children over stdio only",
    "oauth": "the gateway sends configured headers; give a token in headers or a secrets block",
}
_NO_EQUIVALENT = "no gateway equivalent"
#: Fields that name a remote server's URL, and the transport each implies
#: when no C{type} is given (Gemini CLI's C{httpUrl} is Streamable HTTP; a
#: plain C{url} is probed: Streamable HTTP, then HTTP+SSE).
_REMOTE = {"url": "auto", "serverUrl": "auto", "httpUrl": "streamable-http"}
#: A client's C{type} of a remote server, as a gateway C{transport}.
_TRANSPORTS = {
    "http": "streamable-http",
    "streamable-http": "streamable-http",
    "streamableHttp": "streamable-http",
    "sse": "sse",
}
#: VS Code's predefined variables that look like environment variables.
_CLIENT_VARIABLES = frozenset({"workspaceFolder", "workspaceFolderBasename", "userHome", "cwd", "pathSeparator", "/"})
_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_NAME_RULE = "a service name is 1-64 of A-Z a-z 0-9 _ -"


@dataclass(frozen=True)
class Note:
    """
    Something of the client's configuration that did not map as written.

    @ivar source: Its key path in the client's document, e.g.
        C{mcpServers.todo.autoApprove}.
    @ivar target: The key path of the gateway entry it concerns, e.g.
        C{services.todo}; C{""} when nothing was imported (a skipped server).
    @ivar message: What happened, e.g. C{field 'autoApprove' not mapped (...)}.
    """

    source: str
    target: str
    message: str

    def __str__(self) -> str:
        """
        @return: The report line, e.g. C{note: services.todo: field 'autoApprove' not mapped (...)}.
        """
        if not self.target:
            return f"note: {self.source}: skipped: {self.message}"
        return f"note: {self.target}: {self.message}"


@dataclass(frozen=True)
class Imported:
    """
    The result of an import.

    @ivar services: Raw gateway C{services} entries by service name, in the
        client's order, as a configuration file holds them.
    @ivar notes: What did not map as written, in the client's order.
    """

    services: dict[str, dict[str, Any]]
    notes: tuple[Note, ...]


class _Converter:
    """
    Converts blocks of servers, collecting notes (or, when strict, raising the first).
    """

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.services: dict[str, dict[str, Any]] = {}
        self.notes: list[Note] = []

    def note(self, source: str, target: str, message: str) -> None:
        if self.strict:
            raise ConfigError(f"{source}: {message}")
        self.notes.append(Note(source, target, message))

    def imported(self) -> Imported:
        return Imported(self.services, tuple(self.notes))

    def block(self, raw: Any, path: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected an object keyed by server name, got {kind(raw)}")
        taken = set(self.services) | {name for name in raw if SERVICE_NAME.fullmatch(name)}
        for name, entry in raw.items():
            where = f"{path}.{name}"
            if not isinstance(entry, dict):
                raise ConfigError(f"{where}: expected an object, got {kind(entry)}")
            transport = self.transport(entry, where)
            if not transport:
                continue
            service = name
            if not SERVICE_NAME.fullmatch(name) or name in self.services:
                if self.strict:
                    raise ConfigError(f"{where}: {_NAME_RULE}")
                service = _rename(name, taken)
                taken.add(service)
                why = _NAME_RULE if not SERVICE_NAME.fullmatch(name) else "the name is taken"
                self.note(where, f"services.{service}", f"renamed from {name!r} ({why})")
            target = f"services.{service}"
            if transport == "stdio":
                self.services[service] = self.server(entry, where, target)
            else:
                self.services[service] = self.remote_server(entry, transport, where, target)

    def transport(self, entry: Mapping[str, Any], where: str) -> str:
        """
        @return: C{"stdio"}, the gateway C{transport} of a remote server, or
            C{""} (noted) for a C{type} the gateway does not speak.
        @raise ConfigError: If the entry names no program and no URL, or two URLs.
        """
        given = entry.get("type")
        if given is not None and not isinstance(given, str):
            raise ConfigError(f"{where}.type: expected a string, got {kind(given)}")
        urls = [key for key in _REMOTE if key in entry]
        if given == "stdio" or (given is None and not urls):
            if "command" not in entry:
                raise ConfigError(f"{where}.command: missing (the program to run)")
            return "stdio"
        if given is not None and given not in _TRANSPORTS:
            self.note(where, "", f"type {given!r} is not a transport the gateway speaks (stdio, http, sse)")
            return ""
        if not urls:
            raise ConfigError(f"{where}.url: missing (the server's address)")
        if len(urls) > 1:
            raise ConfigError(f"{where}: both {urls[0]!r} and {urls[1]!r}: give one URL")
        return _TRANSPORTS[given] if given is not None else _REMOTE[urls[0]]

    def remote_server(self, entry: Mapping[str, Any], transport: str, where: str, target: str) -> dict[str, Any]:
        key = next(key for key in _REMOTE if key in entry)
        url = _text(entry[key], f"{where}.{key}")
        self.variables(url, f"{where}.{key}", f"{target}.url")
        result: dict[str, Any] = {"url": url}
        if transport != "auto":
            result["transport"] = transport
        if "headers" in entry:
            result["headers"] = self.strings(entry["headers"], f"{where}.headers", f"{target}.headers")
        self.common(entry, result, where)
        if "command" in entry:
            self.note(f"{where}.command", target, "field 'command' not mapped (a remote server runs no program)")
        self.unmapped(entry, {key, "type", "headers", "command", "disabled", "description"}, where, target)
        return result

    def common(self, entry: Mapping[str, Any], result: dict[str, Any], where: str) -> None:
        """
        Copy C{description} and C{disabled} (as C{enabled: false}) into C{result}.
        """
        if "description" in entry:
            result["description"] = _text(entry["description"], f"{where}.description")
        disabled = entry.get("disabled", False)
        if not isinstance(disabled, bool):
            raise ConfigError(f"{where}.disabled: expected true or false, got {kind(disabled)}")
        if disabled:
            result["enabled"] = False

    def unmapped(self, entry: Mapping[str, Any], mapped: set[str], where: str, target: str) -> None:
        """
        Note each field of C{entry} not in C{mapped}.
        """
        for key in entry:
            if key not in mapped:
                reason = _NOT_MAPPED.get(key, _NO_EQUIVALENT)
                self.note(f"{where}.{key}", target, f"field {key!r} not mapped ({reason})")

    def server(self, entry: Mapping[str, Any], where: str, target: str) -> dict[str, Any]:
        command = [_text(entry["command"], f"{where}.command")]
        if not command[0]:
            raise ConfigError(f"{where}.command: empty")
        args = entry.get("args", [])
        if not isinstance(args, list):
            raise ConfigError(f"{where}.args: expected a list of strings, got {kind(args)}")
        command += [_text(arg, f"{where}.args[{index}]") for index, arg in enumerate(args)]
        self.variables(command[0], f"{where}.command", f"{target}.command[0]")
        for index, arg in enumerate(command[1:]):
            self.variables(arg, f"{where}.args[{index}]", f"{target}.command[{index + 1}]")
        result: dict[str, Any] = {"command": command}
        self.common(entry, result, where)
        if "env" in entry:
            result["env"] = self.strings(entry["env"], f"{where}.env", f"{target}.env")
        if "cwd" in entry:
            cwd = _text(entry["cwd"], f"{where}.cwd")
            self.variables(cwd, f"{where}.cwd", f"{target}.sandbox.working_dir")
            result["sandbox"] = {"working_dir": cwd}
        self.unmapped(entry, {"command", "args", "env", "cwd", "disabled", "description", "type"}, where, target)
        return result

    def strings(self, value: Any, source: str, target: str) -> dict[str, str]:
        """
        @return: C{value}, an object of strings (C{env}, C{headers}), its
            client variables noted.
        @raise ConfigError: If it is not one.
        """
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: expected an object of strings, got {kind(value)}")
        strings = {key: _text(text, f"{source}.{key}") for key, text in value.items()}
        for key, text in strings.items():
            self.variables(text, f"{source}.{key}", f"{target}.{key}")
        return strings

    def variables(self, value: str, source: str, target: str) -> None:
        """
        Note the client's own variables (C{${workspaceFolder}}, C{${env:HOME}},
        C{${HOME:-/root}}): the gateway would look them up in its environment.
        """
        for match in _VARIABLE.finditer(value):
            name = match.group(1).split("|", 1)[0].strip()
            if ":" in name or name in _CLIENT_VARIABLES:
                self.note(
                    source,
                    target,
                    f"{match.group(0)!r} is the client's variable: the gateway substitutes only "
                    "${NAME} and ${NAME|default} from its environment (an unset one is empty)",
                )


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: expected a string, got {kind(value)}")
    return value


def _rename(name: str, taken: set[str]) -> str:
    """
    @return: C{name} with each character a service name cannot hold replaced
        by C{_}, cut to 64, and given a suffix C{_2}, C{_3}... if that is taken.
    """
    base = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "server"
    candidate, number = base, 1
    while candidate in taken:
        number += 1
        suffix = f"_{number}"
        candidate = base[: 64 - len(suffix)] + suffix
    return candidate


def convert_servers(raw: Any, path: str = "mcpServers", strict: bool = False) -> Imported:
    """
    Convert one block of servers (the value of C{mcpServers} or C{servers}).

    @param raw: The decoded block.
    @param path: Its key path, for notes and messages.
    @param strict: Raise L{ConfigError} for what would be a note, and for a
        name that is not a service name (a gateway configuration's own
        C{mcpServers} must map completely).
    @return: The services and the notes.
    @raise ConfigError: Naming the key path of a value of the wrong type, an
        entry with neither C{command} nor C{url}, or (when strict) a note.
    """
    converter = _Converter(strict)
    converter.block(raw, path)
    return converter.imported()


def import_servers(document: Any) -> Imported:
    """
    Convert a client's whole configuration document.

    Its C{mcpServers} and/or C{servers} object is read, or VS Code's
    C{settings.json} C{mcp.servers}.  Other keys beside them (VS Code's
    C{inputs}, Claude Desktop's preferences) are noted as not read; the rest
    of a C{settings.json} is left alone.

    @param document: The decoded JSON document.
    @return: The services and the notes.
    @raise ConfigError: If there is no block of servers, or a value has the
        wrong type.
    """
    if not isinstance(document, dict):
        raise ConfigError(f"expected a JSON object, got {kind(document)}")
    container, prefix = document, ""
    if "mcpServers" not in document and "servers" not in document and isinstance(document.get("mcp"), dict):
        container, prefix = document["mcp"], "mcp."
    blocks = [key for key in ("mcpServers", "servers") if key in container]
    if not blocks:
        raise ConfigError(
            "no mcpServers or servers object (nor VS Code's mcp.servers): not an MCP client's configuration"
        )
    converter = _Converter(strict=False)
    for key in container:
        if key not in blocks:
            converter.note(f"{prefix}{key}", "", "not a list of MCP servers, not read")
    for key in blocks:
        converter.block(container[key], f"{prefix}{key}")
    return converter.imported()
