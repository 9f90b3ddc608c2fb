"""
The admin dashboard (C{GET /admin}): server-rendered pages, their own
script and style sheet (C{static/}), the login form's browser sessions.
"""

from mcpgateway.http.admin.pages import CSP, AdminPages

__all__ = ["CSP", "AdminPages"]
