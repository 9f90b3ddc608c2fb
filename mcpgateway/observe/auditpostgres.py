"""
The audit log's PostgreSQL storage: one log shared by several gateways.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from mcpgateway.observe.auditsql import Storage

__all__ = ["PostgresStorage"]

#: PostgreSQL's advisory lock key for migrations (any constant shared by every gateway).
_MIGRATION_LOCK = 0x6D637061756474  # "mcpaudt"


class PostgresStorage(Storage):
    """
    A PostgreSQL database, through psycopg 3 (the C{postgres} extra).
    """

    dialect = "postgresql"
    _types = {"id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "real": "DOUBLE PRECISION", "bigint": "BIGINT"}

    @classmethod
    def open(cls, uri: str) -> PostgresStorage:
        """
        @param uri: C{postgresql://user:password@host:port/database?...}; a
            5 s C{connect_timeout} unless it says otherwise.
        """
        import psycopg

        extra: dict[str, Any] = {}
        if "connect_timeout=" not in uri:
            extra["connect_timeout"] = 5
        if "application_name=" not in uri:
            extra["application_name"] = "mcpgateway-audit"
        return cls(psycopg.connect(uri, autocommit=True, **extra))

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    def _undefined_table(self, error: Exception) -> bool:
        import psycopg.errors

        return isinstance(error, psycopg.errors.UndefinedTable)

    def is_transient(self, error: Exception) -> bool:
        import psycopg

        return isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self.connection.transaction():
            yield

    def _lock_migrations(self) -> None:
        self.connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
