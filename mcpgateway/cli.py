"""
C{mcp-gateway -c config.json}: run the gateway in the foreground, as
C{twistd -n mcpgateway --config config.json} does.

C{mcp-gateway bridge URL ...}: run the stdio bridge to a remote gateway
(L{mcpgateway.bridge}).

C{mcp-gateway import FILE ...}: a Claude Desktop, Cursor or VS Code server
list as gateway services (L{mcpgateway.importer}).

C{mcp-gateway audit export ...}: the audit log as JSON lines
(L{mcpgateway.auditcli}).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """
    Parse the seeds' command line and hand over to twistd.

    @param argv: Arguments (without the program name); C{sys.argv[1:]} if L{None}.
    """
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["bridge"]:
        from mcpgateway.bridge import main as bridge

        bridge(arguments[1:])
        return
    if arguments[:1] == ["import"]:
        from mcpgateway.importer import main as import_servers

        raise SystemExit(import_servers(arguments[1:]))
    if arguments[:1] == ["audit"]:
        from mcpgateway.auditcli import main as audit

        raise SystemExit(audit(arguments[1:]))
    parser = argparse.ArgumentParser(prog="mcp-gateway", description="Run the MCP gateway in the foreground.")
    parser.add_argument("-c", "--config", default="config.json", help="JSON configuration file (default: config.json)")
    parser.add_argument("-l", "--listen", help="strports endpoint overriding server.host/port")
    parser.add_argument("--logfile", default="-", help="log file for twistd (default: standard output)")
    args = parser.parse_args(argv)
    from twisted.scripts.twistd import run

    sys.argv = [
        "twistd",
        "--nodaemon",
        "--pidfile=",
        f"--logfile={args.logfile}",
        "mcpgateway",
        "--config",
        args.config,
    ]
    if args.listen:
        sys.argv += ["--listen", args.listen]
    run()
