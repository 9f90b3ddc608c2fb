"""
Constants of the MCP specification and of JSON-RPC 2.0 that the gateway
uses on both sides: towards its children and towards its clients.
"""

from __future__ import annotations

__all__ = [
    "CAPABILITIES_KEY",
    "CLIENT_INFO_KEY",
    "ENVELOPE_KEYS",
    "HEADER_MISMATCH",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "LEGACY_VERSION",
    "LEGACY_VERSIONS",
    "LOG_LEVEL_KEY",
    "METHOD_NOT_FOUND",
    "MODERN_VERSION",
    "MODERN_VERSIONS",
    "PARSE_ERROR",
    "REQUEST_CANCELLED",
    "REQUEST_TIMEOUT",
    "RESOURCE_NOT_FOUND",
    "SERVER_INFO_KEY",
    "UNSUPPORTED_PROTOCOL_VERSION",
    "VERSION_KEY",
]

#: The initialize-handshake ("legacy") protocol versions, oldest first.
LEGACY_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
#: The newest legacy version: what the gateway offers a child.
LEGACY_VERSION = LEGACY_VERSIONS[-1]
#: The stateless ("modern") protocol version.
MODERN_VERSION = "2026-07-28"
MODERN_VERSIONS = (MODERN_VERSION,)

#: C{params._meta} keys of the modern era's per-request envelope.
VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
CLIENT_INFO_KEY = "io.modelcontextprotocol/clientInfo"
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
LOG_LEVEL_KEY = "io.modelcontextprotocol/logLevel"
#: The envelope keys a client sends (not passed on to a child).
ENVELOPE_KEYS = (VERSION_KEY, CAPABILITIES_KEY, CLIENT_INFO_KEY, LOG_LEVEL_KEY)

# JSON-RPC 2.0 error codes, and MCP's own.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
REQUEST_TIMEOUT = -32001
RESOURCE_NOT_FOUND = -32002
HEADER_MISMATCH = -32020
UNSUPPORTED_PROTOCOL_VERSION = -32022
REQUEST_CANCELLED = -32800
