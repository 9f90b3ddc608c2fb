"""
A real PostgreSQL server on a free loopback port, for the tests of the audit
log's PostgreSQL storage (L{mcpgateway.observe.auditpostgres}).

L{postgres_server} makes a throwaway cluster (C{initdb}) in a temporary
directory and runs it with C{pg_ctl}: as the C{postgres} user when the tests
run as root (PostgreSQL refuses root), with trust authentication, listening
on 127.0.0.1 only and on a Unix socket in that directory, without fsync.  It
is stopped (immediate mode) and removed when the tests end.  The test is
skipped when the server binaries (Debian's C{postgresql} package) or psycopg
are missing (a failure in CI, see L{tests.conftest.require_binary}).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .redis_fixture import free_port

__all__ = ["PostgresServer", "postgres_server"]


def server_binaries() -> Path | None:
    """
    @return: The directory holding C{initdb} and C{pg_ctl} (Debian keeps them
        off C{PATH}, in C{/usr/lib/postgresql/<version>/bin}), or L{None}.
    """
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4] or 0))
    return Path(versions[-1]).parent if versions else None


class PostgresServer:
    """
    A running throwaway PostgreSQL cluster.

    @ivar port: Its loopback port.
    @ivar directory: Its data, socket and log.
    """

    def __init__(self, binaries: Path, directory: Path, port: int) -> None:
        self.binaries = binaries
        self.directory = directory
        self.port = port
        self.data = directory / "data"
        self.log = directory / "server.log"
        self.user: str | None = "postgres" if os.geteuid() == 0 else None

    def _run(self, *command: str, timeout: float = 60) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        result = subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{command[0]} failed ({result.returncode}): {result.stderr[-2000:]}\n{log}")

    def start(self) -> None:
        """
        Make the cluster and start the server; returns once it accepts connections.
        """
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self._run(
            str(self.binaries / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        options = f"-k {self.directory} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off"
        options += " -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            str(self.binaries / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"
        )

    def stop(self) -> None:
        """
        Stop the server at once (it holds only test data).
        """
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run(str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=30)

    def uri(self, database: str = "postgres") -> str:
        """
        @return: A C{postgresql://} URI of C{database} on this server.
        """
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """
        @return: The URI of a new, empty database.
        """
        import psycopg

        name = f"audit_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.uri(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """
    Run a throwaway PostgreSQL server for the duration.

    Skips the test when the server binaries or psycopg are missing.
    """
    binaries = server_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed (Debian: postgresql)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'mcpgateway[postgres]')")
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    directory = Path(tempfile.mkdtemp(prefix="mcpgateway-pg-"))
    server = None
    try:
        for attempt in range(3):
            server = PostgresServer(binaries, directory, free_port())
            try:
                server.start()
            except RuntimeError:  # the port was taken in between: try another
                if attempt == 2:
                    raise
                server.stop()
                shutil.rmtree(server.data, ignore_errors=True)
                continue
            break
        deadline = time.monotonic() + 10
        while not _answers(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _answers(server: PostgresServer) -> bool:
    import psycopg

    try:
        with psycopg.connect(server.uri(), connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False
