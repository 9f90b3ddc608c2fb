"""mcpgateway tests."""
