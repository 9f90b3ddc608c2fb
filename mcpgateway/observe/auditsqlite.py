"""
The audit log's SQLite storage: a file, the default.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator

from mcpgateway.observe.auditsql import Storage, StorageError

__all__ = ["SQLiteStorage"]


class SQLiteStorage(Storage):
    """
    A SQLite file in WAL mode (readers never wait for the writer), with
    C{synchronous=NORMAL}: a commit is durable against a crash of the gateway,
    and at worst the last commits are lost with a crash of the machine.
    """

    dialect = "sqlite"
    _types = {"id": "INTEGER PRIMARY KEY", "real": "REAL", "bigint": "INTEGER"}

    @classmethod
    def open(cls, path: str, create: bool) -> SQLiteStorage:
        """
        @param path: The database file.
        @param create: Make it (mode 0600, its directory 0700) if missing,
            and switch it to WAL; otherwise it must exist.
        @raise StorageError: If it is missing and not to be made.
        """
        if create:
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        elif not os.path.isfile(path):
            raise StorageError(f"no audit database at {path}")
        connection = sqlite3.connect(path, timeout=5.0, isolation_level=None)
        try:
            if create:
                connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error:
            connection.close()
            raise
        return cls(connection)

    def _undefined_table(self, error: Exception) -> bool:
        return isinstance(error, sqlite3.OperationalError) and "no such table" in str(error)

    def is_transient(self, error: Exception) -> bool:
        return isinstance(error, sqlite3.OperationalError)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")
