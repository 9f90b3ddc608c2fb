"""
The audit log's storage: one table of tool calls, C{audit_calls}, with the
same schema and migrations in SQLite (the default: a file) and PostgreSQL
(psycopg 3: one log shared by several gateways).

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

import base64
import binascii
import contextlib
import datetime
import json
import math
import os
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mcpgateway.errors import BadRequest
from mcpgateway.names import SERVICE_NAME, TOOL_NAME
from mcpgateway.observe.logs import now_iso

__all__ = [
    "COLUMNS",
    "MAX_LIMIT",
    "SCHEMA_VERSION",
    "Query",
    "Storage",
    "StorageError",
    "describe",
    "missing_driver",
    "open_storage",
    "parse_time",
    "query_from_params",
    "storage_uri",
]

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
#: The largest page of L{Storage.select}.
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100

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
#: PostgreSQL's advisory lock key for migrations (any constant shared by every gateway).
_MIGRATION_LOCK = 0x6D637061756474  # "mcpaudt"


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


# -- queries ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """
    Which records to read, and one page of them.

    @ivar principal: Only this principal's calls.
    @ivar service: Only calls to this service.
    @ivar tool: Only calls of this tool.
    @ivar outcomes: Only calls with one of these outcomes (C{ok},
        C{tool_error}, an error code); all if empty.
    @ivar since: Only calls started at or after this POSIX time.
    @ivar until: Only calls started before this POSIX time.
    @ivar limit: At most this many records.
    @ivar after: The position C{(time, id)} of the previous page's last record.
    @ivar newest_first: The order: newest first, or oldest first.
    """

    principal: str | None = None
    service: str | None = None
    tool: str | None = None
    outcomes: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None
    limit: int = DEFAULT_LIMIT
    after: tuple[float, int] | None = None
    newest_first: bool = True


def encode_cursor(time: float, row_id: int) -> str:
    """
    @return: The opaque cursor for the position C{(time, id)}.
    """
    return base64.urlsafe_b64encode(f"{time!r}:{row_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, int]:
    """
    @return: The position L{encode_cursor} encoded.
    @raise ValueError: If C{cursor} is not one.
    """
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        time, row_id = text.split(":")
        position = float(time), int(row_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor of this API") from None
    if not math.isfinite(position[0]):
        raise ValueError("not a cursor of this API")
    return position


_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")


def parse_time(text: str) -> float:
    """
    @param text: POSIX seconds (C{1767225600}, C{1767225600.5}) or ISO-8601
        (C{2026-01-01}, C{2026-01-01T12:00:00Z}, C{...+02:00}; without an
        offset, UTC).
    @return: POSIX seconds.
    @raise ValueError: If it is neither.
    """
    text = text.strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    iso = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
    try:
        when = datetime.datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(f"{text!r} is neither POSIX seconds nor an ISO-8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


_PRINCIPAL = re.compile(r"[A-Za-z0-9_.@-]{1,128}")
_OUTCOME = re.compile(r"[a-z0-9_]{1,64}")
_PARAMETERS = ("principal", "service", "tool", "outcome", "since", "until", "limit", "cursor")


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = [value for value in params.get(name, ()) if value != ""]
    if len(values) > 1:
        raise BadRequest(f"{name} is given {len(values)} times; give it once", f"invalid_{name}")
    return values[0] if values else None


def _matching(value: str | None, pattern: re.Pattern[str], name: str, rule: str) -> str | None:
    if value is not None and not pattern.fullmatch(value):
        raise BadRequest(f"{name} must be {rule}", f"invalid_{name}")
    return value


def query_from_params(params: Mapping[str, Sequence[str]]) -> Query:
    """
    Read the query string of C{GET /audit}.

    @param params: Each parameter's values (an empty value counts as absent).
    @return: The query, newest first.
    @raise BadRequest: C{invalid_query} for an unknown parameter, else
        C{invalid_<parameter>} naming what is wrong.
    """
    unknown = sorted(set(params) - set(_PARAMETERS))
    if unknown:
        known = ", ".join(_PARAMETERS)
        raise BadRequest(f"unknown query parameter {unknown[0]!r} (known: {known})", "invalid_query")
    outcome = _one(params, "outcome")
    outcomes = tuple(outcome.split(",")) if outcome is not None else ()
    for item in outcomes:
        _matching(item, _OUTCOME, "outcome", "ok, tool_error or error codes (a-z 0-9 _), comma-separated")
    times: dict[str, float | None] = {}
    for name in ("since", "until"):
        text = _one(params, name)
        try:
            times[name] = parse_time(text) if text is not None else None
        except ValueError as error:
            raise BadRequest(f"{name}: {error}", f"invalid_{name}") from None
    since, until = times["since"], times["until"]
    if since is not None and until is not None and until <= since:
        raise BadRequest("until must be later than since", "invalid_until")
    limit_text = _one(params, "limit")
    limit = DEFAULT_LIMIT
    if limit_text is not None:
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
            raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}", "invalid_limit")
        limit = int(limit_text)
    cursor = _one(params, "cursor")
    try:
        after = decode_cursor(cursor) if cursor is not None else None
    except ValueError as error:
        raise BadRequest(f"cursor: {error} (use next_cursor as it was given)", "invalid_cursor") from None
    return Query(
        principal=_matching(_one(params, "principal"), _PRINCIPAL, "principal", "1-128 of A-Z a-z 0-9 _ . @ -"),
        service=_matching(_one(params, "service"), SERVICE_NAME, "service", "1-64 of A-Z a-z 0-9 _ -"),
        tool=_matching(_one(params, "tool"), TOOL_NAME, "tool", "1-128 of A-Z a-z 0-9 _ . -"),
        outcomes=outcomes,
        since=since,
        until=until,
        limit=limit,
        after=after,
    )


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


# -- storages ------------------------------------------------------------------------------


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
