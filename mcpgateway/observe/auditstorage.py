"""
The audit storage a URI names (C{audit.storage}: C{sqlite:PATH} or
C{postgresql://...}): its default, whether this installation can use it,
how it is logged, and opening it.
"""

from __future__ import annotations

import os
import re

from mcpgateway.observe.auditpostgres import PostgresStorage
from mcpgateway.observe.auditsql import Storage, StorageError
from mcpgateway.observe.auditsqlite import SQLiteStorage

__all__ = ["describe", "missing_driver", "open_storage", "storage_uri"]


def _is_postgres(uri: str) -> bool:
    return uri.startswith(("postgresql://", "postgres://"))


def storage_uri(storage: str, state_dir: str) -> str:
    """
    @param storage: C{audit.storage}.
    @param state_dir: C{server.state_dir}.
    @return: C{storage}, or the default C{sqlite:<state_dir>/audit.sqlite3}.
    """
    return storage or "sqlite:" + os.path.join(state_dir, "audit.sqlite3")


def missing_driver(uri: str) -> str:
    """
    @return: Why C{uri} cannot be used on this installation, or C{""}.
    """
    if _is_postgres(uri):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "audit.storage is a PostgreSQL URI but psycopg is not installed: pip install 'mcpgateway[postgres]'"
    return ""


def describe(uri: str) -> str:
    """
    @return: C{uri} without its password, to be logged.
    """
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", uri)


def open_storage(uri: str, create: bool) -> Storage:
    """
    @param uri: C{sqlite:PATH} or C{postgresql://...} (see L{storage_uri}).
    @param create: Make a missing SQLite file (the writer does; readers do not).
    @return: A connection to it.
    @raise StorageError: If psycopg is missing, or the SQLite file is and C{create} is false.
    @raise Exception: The driver's errors (unreachable, refused...).
    """
    if _is_postgres(uri):
        problem = missing_driver(uri)
        if problem:
            raise StorageError(problem)
        return PostgresStorage.open(uri)
    return SQLiteStorage.open(uri.removeprefix("sqlite:"), create)
