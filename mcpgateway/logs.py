"""
C{twistd --logger mcpgateway.logs.json_logger ...}: the documented name of
the JSON log observer; the code is in L{mcpgateway.observe.logs}.
"""

from mcpgateway.observe.logs import json_logger

__all__ = ["json_logger"]
