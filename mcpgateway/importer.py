"""
C{mcp-gateway import FILE [--into CONFIG [--replace]] [--output OUT]}: a
Claude Desktop, Cursor, VS Code or C{.mcp.json} list of MCP servers as
gateway services (L{mcpgateway.config.claude}).

Without C{--into} it prints a configuration holding only those C{services};
with it, it adds them to C{CONFIG} (or writes the merged configuration to
C{OUT}), refusing a name C{CONFIG} already has unless C{--replace}.  Every
note goes to standard error, one a line.  Exit status: 0 when imported
(with or without notes), 1 when refused (a name taken, a file not written), 2
for unusable input (unreadable, not JSON, no list of servers, a value of the
wrong type).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import stat
import sys
import tempfile
from typing import Any

from mcpgateway.config.claude import import_servers
from mcpgateway.config.values import ConfigError, kind

__all__ = ["main"]

#: A string (kept), or a comment (VS Code's files are JSON with comments).
_COMMENT = re.compile(r'("(?:\\.|[^"\\])*")|//[^\n]*|/\*.*?\*/', re.DOTALL)
#: A string (kept), or a comma before a closing bracket (JSONC allows it).
_TRAILING_COMMA = re.compile(r'("(?:\\.|[^"\\])*")|,(?=\s*[}\]])')


class _Refused(Exception):
    """
    The command cannot go on; the message says why, the code is the exit status.
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _strings(match: re.Match[str]) -> str:
    return match.group(1) or ""


def _read(path: str, comments: bool) -> Any:
    """
    @param comments: Accept JSON with comments and trailing commas (a client's
        file: VS Code's are JSONC).
    @return: The decoded document.
    @raise _Refused: Exit status 2 if it cannot be read or is not JSON.
    """
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8-sig")
    except OSError as error:
        raise _Refused(f"{path}: cannot read: {error.strerror}", 2) from None
    except UnicodeDecodeError as error:
        raise _Refused(f"{path}: not UTF-8: {error}", 2) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        if comments:
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(_TRAILING_COMMA.sub(_strings, _COMMENT.sub(_strings, text)))
        raise _Refused(f"{path}: not valid JSON: {error}", 2) from None


def _write(path: str, text: str) -> None:
    """
    Replace the file at C{path} (through a link: the file it names) with
    C{text} atomically, keeping its mode and, where allowed, its owner; a new
    file gets mode 0600, for C{env} values are often secrets.

    @raise _Refused: Exit status 1 if it cannot be written.
    """
    target = os.path.realpath(path)
    try:
        old: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        old = None
    try:
        descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.")
    except OSError as error:
        raise _Refused(f"{path}: cannot write: {error.strerror}", 1) from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if old is not None:
            os.chmod(temporary, stat.S_IMODE(old.st_mode))
            with contextlib.suppress(OSError):
                os.chown(temporary, old.st_uid, old.st_gid)
        os.replace(temporary, target)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise _Refused(f"{path}: cannot write: {error.strerror}", 1) from None


def _merge(config: Any, path: str, services: dict[str, dict[str, Any]], replace: bool) -> dict[str, Any]:
    """
    @param config: The decoded gateway configuration at C{path}.
    @param services: The imported entries, added after the existing ones.
    @param replace: Replace an entry of the same name (in C{services} or in
        the configuration's own C{mcpServers}) instead of refusing.
    @return: The merged configuration.
    @raise _Refused: Exit status 2 if it is not a configuration, 1 if a name is taken.
    """
    if not isinstance(config, dict):
        raise _Refused(f"{path}: expected a JSON object, got {kind(config)}", 2)
    merged = dict(config)
    existing: dict[str, dict[str, Any]] = {}
    for key in ("services", "mcpServers"):
        block = merged.get(key, {})
        if not isinstance(block, dict):
            raise _Refused(f"{path}: {key}: expected an object, got {kind(block)}", 2)
        existing[key] = dict(block)
    taken = sorted(name for name in services if any(name in block for block in existing.values()))
    if taken and not replace:
        names = ", ".join(taken)
        raise _Refused(f"{path}: already has {names}: rename them in the imported file, or give --replace", 1)
    for name in taken:
        existing["mcpServers"].pop(name, None)
    existing["services"].update(services)
    merged["services"] = existing["services"]
    if "mcpServers" in merged:
        merged["mcpServers"] = existing["mcpServers"]
    return merged


def _dump(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """
    Run C{mcp-gateway import}.

    @param argv: Arguments after C{import}; C{sys.argv[1:]} if L{None}.
    @return: The exit status: 0 imported, 1 refused, 2 unusable input.
    """
    parser = argparse.ArgumentParser(
        prog="mcp-gateway import",
        description="Turn a Claude Desktop, Cursor, VS Code or .mcp.json server list into gateway services.",
    )
    parser.add_argument("file", help="claude_desktop_config.json, .cursor/mcp.json, .vscode/mcp.json, .mcp.json...")
    parser.add_argument("--into", metavar="CONFIG", help="add the services to this gateway configuration")
    parser.add_argument("--replace", action="store_true", help="with --into: replace services of the same name")
    parser.add_argument("--output", metavar="OUT", help="write here (default: standard output, or CONFIG with --into)")
    args = parser.parse_args(argv)
    try:
        try:
            imported = import_servers(_read(args.file, comments=True))
        except ConfigError as error:
            raise _Refused(f"{args.file}: {error}", 2) from None
        for note in imported.notes:
            print(note, file=sys.stderr)
        if args.into:
            config = _merge(_read(args.into, comments=False), args.into, imported.services, args.replace)
            _write(args.output or args.into, _dump(config))
        elif args.output:
            _write(args.output, _dump({"services": imported.services}))
        else:
            sys.stdout.write(_dump({"services": imported.services}))
    except _Refused as error:
        print(f"mcp-gateway import: {error}", file=sys.stderr)
        return error.code
    return 0
