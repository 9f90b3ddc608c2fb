"""
The audit log's table of tool calls, C{audit_calls}: its schema, its
migrations, and the SQL that SQLite and PostgreSQL share (L{Storage}; each
dialect's connection, transactions and errors are in
L{mcpgateway.observe.auditsqlite} and L{mcpgateway.observe.auditpostgres}).

Everything here blocks: the gateway calls it only from its audit writer
thread (L{mcpgateway.observe.audit}) and, for queries, from the reactor's
thread pool; C{mcp-gateway audit export} calls it directly.

The schema's version is in C{audit_schema} (one row per migration applied,
with when); L{Storage.migrate} applies the missing ones in one transaction
(under an advisory lock on PostgreSQL, so gateways starting together migrate
once) and refuses a database written by a newer gateway.  Pages of records
are read newest first (or oldest first for an export) by keyset on
C{(time, id)}: a cursor is the last record's position, so a page costs the
same however deep it is, and records written meanwhile never shift a page.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from mcpgateway.observe.auditquery import Query, decode_cursor, encode_cursor
from mcpgateway.observe.logs import now_iso

__all__ = ["COLUMNS", "SCHEMA_VERSION", "Storage", "StorageError"]

#: The version L{Storage.migrate} brings a database to.
SCHEMA_VERSION = 1
#: A row as L{Storage.insert} takes it, in this order.
COLUMNS = (
    "time",
    "gateway",
    "principal",
    "address",
    "front",
    "service",
    "tool",
    "session",
    "arguments",
    "arguments_truncated",
    "outcome",
    "status",
    "latency_ms",
    "result_bytes",
    "result",
    "result_truncated",
)
#: Rows per C{INSERT} statement: under SQLite's oldest limit of 999 bound values.
ROWS_PER_STATEMENT = 999 // len(COLUMNS)

#: Each migration's statements; C{{id}}, C{{real}} and C{{bigint}} are the dialect's types.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE audit_calls (
            id {id},
            time {real} NOT NULL,
            gateway TEXT NOT NULL,
            principal TEXT NOT NULL,
            address TEXT NOT NULL,
            front TEXT NOT NULL,
            service TEXT NOT NULL,
            tool TEXT NOT NULL,
            session TEXT NOT NULL,
            arguments TEXT,
            arguments_truncated INTEGER NOT NULL DEFAULT 0,
            outcome TEXT NOT NULL,
            status INTEGER NOT NULL,
            latency_ms {real} NOT NULL,
            result_bytes {bigint},
            result TEXT,
            result_truncated INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX audit_calls_time ON audit_calls (time, id)",
        "CREATE INDEX audit_calls_principal ON audit_calls (principal, time, id)",
        "CREATE INDEX audit_calls_service ON audit_calls (service, tool, time, id)",
        "CREATE INDEX audit_calls_outcome ON audit_calls (outcome, time, id)",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION

_SCHEMA_TABLE = "CREATE TABLE IF NOT EXISTS audit_schema (version INTEGER PRIMARY KEY, applied {real} NOT NULL)"


def _insert(rows: int) -> str:
    """
    @return: An C{INSERT} of C{rows} rows, with C{?} for each value.
    """
    values = ", ".join(["(" + ", ".join("?" * len(COLUMNS)) + ")"] * rows)
    # Constant column names; the values are bound.
    return f"INSERT INTO audit_calls ({', '.join(COLUMNS)}) VALUES {values}"  # noqa: S608


class StorageError(Exception):
    """
    The storage cannot be used (missing, newer schema, driver not installed...).
    """


def _decoded(text: str | None, truncated: int) -> Any:
    """
    @return: The stored JSON text as a value, or as the text itself when it was cut.
    """
    if text is None or truncated:
        return text
    return json.loads(text)


def _record(row: Sequence[Any]) -> dict[str, Any]:
    """
    @param row: C{id} then L{COLUMNS}.
    @return: The record as C{GET /audit} and the export give it.
    """
    fields = dict(zip(("id", *COLUMNS), row, strict=True))
    fields["time"] = now_iso(fields["time"])
    fields["arguments"] = _decoded(fields["arguments"], fields["arguments_truncated"])
    fields["result"] = _decoded(fields["result"], fields["result_truncated"])
    fields["arguments_truncated"] = bool(fields["arguments_truncated"])
    fields["result_truncated"] = bool(fields["result_truncated"])
    return fields


class Storage:
    """
    One connection to an audit database; used by one thread at a time.

    @cvar dialect: C{sqlite} or C{postgresql}.
    """

    dialect = ""
    _types: Mapping[str, str] = {}

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def _sql(self, statement: str) -> str:
        return statement

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """
        Run the block in one write transaction.
        """
        raise NotImplementedError()

    def _lock_migrations(self) -> None:
        """
        Keep other gateways out of the migration until it commits.
        """

    def version(self) -> int:
        """
        @return: The schema version of the database (0: no schema).
        """
        self.connection.execute(_SCHEMA_TABLE.format(**self._types))
        found = self.connection.execute("SELECT max(version) FROM audit_schema").fetchone()[0]
        return int(found or 0)

    def migrate(self, now: float) -> int:
        """
        Bring the schema to L{SCHEMA_VERSION}.

        @param now: POSIX time, recorded with each migration applied.
        @return: The version the database had.
        @raise StorageError: If it is newer than this gateway knows.
        """
        with self.transaction():
            self._lock_migrations()
            version = self.version()
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"the audit database has schema version {version}, newer than this gateway's "
                    f"{SCHEMA_VERSION}: upgrade the gateway"
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[number - 1]:
                    self.connection.execute(statement.format(**self._types))
                self.connection.execute(
                    self._sql("INSERT INTO audit_schema (version, applied) VALUES (?, ?)"), (number, now)
                )
        return version

    def check(self) -> None:
        """
        Check, without writing anything, that the database has the audit schema.

        @raise StorageError: If it has none (no gateway has written to it yet).
        """
        try:
            self.connection.execute("SELECT max(version) FROM audit_schema").fetchone()
        except Exception as error:
            if self._undefined_table(error):
                raise StorageError("the audit database has no audit table yet (no gateway has written to it)") from None
            raise

    def _undefined_table(self, error: Exception) -> bool:
        """
        @return: Whether C{error} says that a table does not exist.
        """
        raise NotImplementedError()

    def is_transient(self, error: Exception) -> bool:
        """
        @return: Whether reconnecting and retrying after C{error} may succeed
            (the database is unreachable, locked, full); any other error of a
            write means the rows themselves were refused.
        """
        raise NotImplementedError()

    def insert(self, rows: Sequence[Sequence[Any]]) -> None:
        """
        Write C{rows} (each in L{COLUMNS} order) in one transaction.

        Up to L{ROWS_PER_STATEMENT} rows go in each C{INSERT}: the driver
        releases the GIL once per statement, not once per row, so a batch
        barely interrupts the reactor thread.
        """
        with self.transaction():
            for start in range(0, len(rows), ROWS_PER_STATEMENT):
                chunk = rows[start : start + ROWS_PER_STATEMENT]
                self.connection.execute(self._sql(_insert(len(chunk))), [value for row in chunk for value in row])

    def prune(self, before: float, chunk: int) -> int:
        """
        Delete up to C{chunk} records of calls started before C{before}.

        @return: How many were deleted (C{chunk}: there may be more).
        """
        statement = "DELETE FROM audit_calls WHERE id IN (SELECT id FROM audit_calls WHERE time < ? LIMIT ?)"
        with self.transaction():
            deleted = self.connection.execute(self._sql(statement), (before, chunk)).rowcount
        return int(deleted)

    def select(self, query: Query) -> tuple[list[dict[str, Any]], str | None]:
        """
        @return: One page of records, and the cursor of the next page (L{None}
            when this page is the last).
        """
        where: list[str] = []
        params: list[Any] = []
        for column in ("principal", "service", "tool"):
            value = getattr(query, column)
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.outcomes:
            where.append(f"outcome IN ({', '.join('?' * len(query.outcomes))})")
            params.extend(query.outcomes)
        if query.since is not None:
            where.append("time >= ?")
            params.append(query.since)
        if query.until is not None:
            where.append("time < ?")
            params.append(query.until)
        if query.after is not None:
            where.append("(time, id) < (?, ?)" if query.newest_first else "(time, id) > (?, ?)")
            params.extend(query.after)
        order = "DESC" if query.newest_first else "ASC"
        statement = f"SELECT id, {', '.join(COLUMNS)} FROM audit_calls"  # noqa: S608 - constants; values are bound
        if where:
            statement += " WHERE " + " AND ".join(where)
        statement += f" ORDER BY time {order}, id {order} LIMIT ?"
        params.append(query.limit + 1)
        rows = self.connection.execute(self._sql(statement), params).fetchall()
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        cursor = encode_cursor(rows[-1][1], rows[-1][0]) if more else None
        return [_record(row) for row in rows], cursor

    def records(self, query: Query) -> Iterator[dict[str, Any]]:
        """
        @return: Every record C{query} selects, page after page (its C{limit} is the page size).
        """
        while True:
            page, cursor = self.select(query)
            yield from page
            if cursor is None:
                return
            query = replace(query, after=decode_cursor(cursor))

    def close(self) -> None:
        """
        Close the connection (errors ignored: it may be broken already).
        """
        with contextlib.suppress(Exception):
            self.connection.close()
