"""
mcpgateway: supervised stdio MCP servers behind one governed HTTP front.
"""

__version__ = "0.1.0"
