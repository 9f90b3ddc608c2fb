"""
C{python -m mcpgateway.auth token|password}: the documented command that
makes credentials for C{server.principals}; the code is in
L{mcpgateway.policy.auth}.
"""

from mcpgateway.policy.auth import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
