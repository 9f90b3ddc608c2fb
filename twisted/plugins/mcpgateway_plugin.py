"""
The twistd plugin: C{twistd mcpgateway --config config.json}.
"""

from twisted.application.service import ServiceMaker

mcpgateway = ServiceMaker(
    "mcpgateway",
    "mcpgateway.tap",
    "MCP gateway: supervised stdio MCP servers behind a REST and MCP front.",
    "mcpgateway",
)
