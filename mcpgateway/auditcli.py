"""
C{mcp-gateway audit export --config CONFIG [--since T] [--until T] [filters]}:
the audit log's records as JSON lines on standard output, oldest first, read
from the storage the configuration names (C{audit.storage}, by default
C{<server.state_dir>/audit.sqlite3}), while the gateway runs or not.

Each line is one record as C{GET /audit} gives it.  C{--since} and
C{--until} take POSIX seconds or ISO-8601 (UTC without an offset); C{--since}
is inclusive, C{--until} exclusive.  Exit status: 0 when exported (also when
nothing matched), 1 when the storage cannot be read, 2 for a bad command line
or configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from mcpgateway.config import ConfigError, load_config
from mcpgateway.errors import BadRequest
from mcpgateway.observe.auditquery import MAX_LIMIT, query_from_params
from mcpgateway.observe.auditsql import StorageError
from mcpgateway.observe.auditstorage import describe, open_storage, storage_uri

__all__ = ["main"]

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _export(args: argparse.Namespace, write: Callable[[str], Any]) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"mcp-gateway audit export: configuration error: {error}", file=sys.stderr)
        return 2
    params = {
        name: [value]
        for name, value in (
            ("since", args.since),
            ("until", args.until),
            ("principal", args.principal),
            ("service", args.service),
            ("tool", args.tool),
            ("outcome", args.outcome),
        )
        if value is not None
    }
    try:
        query = query_from_params(params)
    except BadRequest as error:
        print(f"mcp-gateway audit export: {error.message}", file=sys.stderr)
        return 2
    query = replace(query, limit=MAX_LIMIT, newest_first=False)
    uri = storage_uri(config.audit.storage, config.server.state_dir)
    try:
        storage = open_storage(uri, create=False)
        try:
            storage.check()
            for record in storage.records(query):
                write(_encode(record) + "\n")
        finally:
            storage.close()
    except BrokenPipeError:
        # The reader went away (| head): nothing more to say, and nothing to flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except StorageError as error:
        print(f"mcp-gateway audit export: {describe(uri)}: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        print(f"mcp-gateway audit export: {describe(uri)}: cannot read: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """
    Run C{mcp-gateway audit}.

    @param argv: Arguments after C{audit}; C{sys.argv[2:]} if L{None}.
    @return: The exit status: 0 exported, 1 the storage cannot be read, 2 bad usage.
    """
    parser = argparse.ArgumentParser(prog="mcp-gateway audit", description="Read the gateway's audit log.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    export = commands.add_parser(
        "export", help="write records as JSON lines, oldest first", description="Write records as JSON lines."
    )
    export.add_argument(
        "-c", "--config", default="config.json", help="the gateway's configuration (default: config.json)"
    )
    export.add_argument("--since", help="from this time on (POSIX seconds or ISO-8601; inclusive)")
    export.add_argument("--until", help="before this time (exclusive)")
    export.add_argument("--principal", help="only this principal's calls")
    export.add_argument("--service", help="only calls to this service")
    export.add_argument("--tool", help="only calls of this tool")
    export.add_argument("--outcome", help="only these outcomes (ok, tool_error, error codes; comma-separated)")
    args = parser.parse_args(sys.argv[2:] if argv is None else argv)
    return _export(args, sys.stdout.write)
