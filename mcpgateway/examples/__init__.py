"""
Example MCP servers that the gateway can supervise.
"""
