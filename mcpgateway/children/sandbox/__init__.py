"""
The child-process sandbox: how an MCP server is started so that it cannot
outlive the gateway, exhaust the host, or read the gateway's secrets.

  - L{launch}: the chain of programs a child starts through (L{build_launch});
  - L{cgroup}: per-child cgroups with a process limit;
  - L{machine}: what this machine can enforce (L{sandbox_capabilities});
  - L{shim}: the chain as one Python program, where util-linux is missing.

The policy itself (levels, limits, environment rules) is configuration:
L{mcpgateway.config.sandbox}.
"""

from mcpgateway.children.sandbox.launch import Launch, SandboxError, build_launch
from mcpgateway.children.sandbox.machine import sandbox_capabilities

__all__ = ["Launch", "SandboxError", "build_launch", "sandbox_capabilities"]
