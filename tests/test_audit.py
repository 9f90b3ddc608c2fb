"""
The audit log (L{mcpgateway.observe.audit} and the C{audit*} modules beside
it): one record per tool call on both doors, refusals included; redaction and
caps; a full queue drops and counts without delaying calls; C{GET /audit};
C{mcp-gateway audit export}; retention.  Every storage test runs against
SQLite and a real PostgreSQL server (L{tests.postgres_fixture}).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from mcp import MCPError
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from mcpgateway import auditcli
from mcpgateway.calls import CallRecord, CallRequest
from mcpgateway.config import AuditConfig, ConfigError, parse_config
from mcpgateway.observe.audit import AuditLog
from mcpgateway.observe.auditquery import Query, parse_time
from mcpgateway.observe.auditrecord import REDACTED
from mcpgateway.observe.auditsql import SCHEMA_VERSION, Storage, StorageError
from mcpgateway.observe.auditstorage import open_storage
from mcpgateway.policy.auth import Principal, hash_token

from .conftest import fixture_service, wait_until
from .postgres_fixture import PostgresServer, postgres_server
from .test_call_hooks import HideFail
from .test_mcp_front import MODES, connect, in_thread
from .test_twistd import assert_orderly_exit, environment, free_port, mcp_gateway, running, twistd, write_config

AGENT_TOKEN = "agent-token-0123456789"
ADMIN = Principal("tester", "admin")
DAY = 86400.0


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """
    One PostgreSQL server for the whole run; each test gets its own database.
    """
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """
    @return: The URI of an empty audit storage of each kind.
    """
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'state' / 'audit.sqlite3'}"
    server: PostgresServer = request.getfixturevalue("pg")
    return server.new_database()


@pytest_twisted.async_yield_fixture
async def audit_log(storage: str) -> AsyncIterator[Callable[..., AuditLog]]:
    """
    Make started audit logs on C{storage}; they are stopped at the end.
    """
    made: list[AuditLog] = []

    def make(clock: Any = reactor, opener: Callable[[], Storage] | None = None, **options: Any) -> AuditLog:
        audit = AuditLog(AuditConfig(**options), storage, clock, reactor, opener=opener, gateway="gw-test")
        audit.start()
        made.append(audit)
        return audit

    yield make
    for audit in made:
        await audit.stop()


def stored(uri: str, query: Query | None = None) -> list[dict[str, Any]]:
    """
    @return: Every record in the storage, oldest first.
    """
    reader = open_storage(uri, create=False)
    try:
        return list(reader.records(query or Query(limit=1000, newest_first=False)))
    finally:
        reader.close()


def call_record(
    tool: str = "echo",
    arguments: Any = None,
    *,
    principal: str = "tester",
    service: str = "fx",
    outcome: str = "ok",
    status: int = 200,
    started: float | None = None,
    result: Any = None,
    front: str = "rest",
) -> CallRecord:
    """
    @return: A record as L{mcpgateway.calls.ToolCalls} makes one.
    """
    request = CallRequest(Principal(principal, "agent"), service, tool, arguments or {}, "s1", front, "10.0.0.7")
    return CallRecord(request, time.time() if started is None else started, 0.0123, outcome, status, result)


def drops(gw: Any) -> dict[str, float]:
    """
    @return: C{mcpgateway_audit_dropped_total} by reason, from the gateway's metrics.
    """
    text = gw.app.metrics.render().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("mcpgateway_audit_dropped_total{"):
            reason = line.split('reason="')[1].split('"')[0]
            found[reason] = float(line.rsplit(" ", 1)[1])
    return found


# -- configuration ----------------------------------------------------------------------------


def test_audit_is_on_by_default_with_sqlite_under_the_state_dir() -> None:
    config = parse_config({}, {})
    assert config.audit.enabled
    assert config.audit.storage == ""
    assert config.server.state_dir == "./state"
    assert config.audit.retain_days == 30
    assert "*password*" in config.audit.redact_keys
    audit = parse_config(
        {
            "audit": {
                "storage": "postgresql://audit@db/audit",
                "retain_days": 0,
                "redact": {"github/*": ["auth.token", "*"]},
                "results": ["todo"],
                "max_result_bytes": "512",
            }
        },
        {},
    ).audit
    assert audit.redact == {"github/*": ("auth.token", "*")}
    assert (audit.retain_days, audit.results, audit.max_result_bytes) == (0, ("todo",), 512)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"storage": "mysql://x"}, "audit.storage: expected sqlite:PATH or postgresql://"),
        ({"storage": "/var/audit.db"}, "audit.storage: expected sqlite:PATH"),
        ({"retain_days": -1}, "audit.retain_days: must not be negative"),
        ({"queue_size": 0}, "audit.queue_size: must be greater than zero"),
        ({"redact": {"notool": ["a"]}}, "audit.redact.notool: a rule's key is"),
        ({"redact": {"a/b": ["x..y"]}}, "audit.redact.a/b: an argument path"),
        ({"redact": ["a/b"]}, "audit.redact: expected an object"),
        ({"bogus": 1}, "audit.bogus: unknown key"),
    ],
)
def test_bad_audit_settings_name_the_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"audit": section}, {})
    assert str(error.value).startswith(message)


# -- one record per call, on both doors ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_each_call_on_either_door_is_one_record(live: Any, audit_log: Any, storage: str) -> None:
    audit = audit_log()
    gw = live({"fx": fixture_service()}, app_options={"policies": [HideFail()], "observers": [audit], "audit": audit})
    before = time.time()
    response, answer = await gw.call("fx", "echo", "s1", {"text": "hi", "password": "hunter2"})
    assert (response.code, answer["result"]) == (200, "hi")
    response, body = await gw.call("fx", "fail", "s1")
    assert (response.code, body["code"]) == (403, "forbidden_tool")
    response, body = await gw.call("fx", "add", "s1", {"a": 1, "b": "x"})
    assert response.code == 200 and body["is_error"] is True

    async def use() -> Any:
        async with connect(gw.url + "/mcp", MODES[0]) as client:
            echoed = await client.call_tool("fx.echo", {"text": "there"})
            with pytest.raises(MCPError):
                await client.call_tool("fx.fail", {})
            return echoed

    echoed = await in_thread(use())
    assert echoed.content[0].text == "there"
    await audit.flush()

    records = stored(storage)
    assert [(r["front"], r["tool"], r["outcome"], r["status"]) for r in records] == [
        ("rest", "echo", "ok", 200),
        ("rest", "fail", "forbidden_tool", 403),
        ("rest", "add", "tool_error", 200),
        ("mcp", "echo", "ok", 200),
        ("mcp", "fail", "forbidden_tool", 403),
    ]
    first = records[0]
    assert first["principal"] == "tester" and first["address"] == "127.0.0.1"
    assert (first["service"], first["session"], first["gateway"]) == ("fx", "s1", "gw-test")
    assert first["arguments"] == {"text": "hi", "password": REDACTED}
    assert first["latency_ms"] > 0 and before - 0.002 <= parse_time(first["time"]) <= time.time()
    # The size of the MCP result the call gave, whichever door.
    assert first["result_bytes"] == len(json.dumps({"content": answer["content"], "isError": False}).replace(" ", ""))
    assert first["result"] is None and not first["result_truncated"]  # results are opt-in
    assert records[1]["result_bytes"] is None  # refused: no result
    assert records[3]["session"].startswith("mcp-") and records[3]["arguments"] == {"text": "there"}
    assert records[3]["result_bytes"] > 0
    assert len({r["id"] for r in records}) == 5
    assert audit.written == 5 and sum(audit.dropped.values()) == 0


# -- redaction and caps ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_redaction_at_any_depth_and_by_tool_rule(audit_log: Any, storage: str) -> None:
    audit = audit_log(redact={"fx/log*": ["auth.header", "cred*"], "*/wipe": ["*"]})
    arguments = {
        "user": "bob",
        "Password": "p",
        "keyword": "keep",
        "max_tokens": 5,
        "nested": {"API_KEY": "k", "list": [{"accessToken": "t", "ok": 1}, "plain"]},
        "auth": {"header": "Basic eA==", "other": "y", "items": [{"header": "h"}]},
        "creds": {"anything": 1},
    }
    audit.record(call_record("login", arguments))
    audit.record(call_record("echo", arguments))
    audit.record(call_record("wipe", {"a": 1, "b": {"c": 2}}))
    await audit.flush()
    login, echo, wipe = (r["arguments"] for r in stored(storage))
    assert login == {
        "user": "bob",
        "Password": REDACTED,
        "keyword": "keep",
        "max_tokens": 5,
        "nested": {"API_KEY": REDACTED, "list": [{"accessToken": REDACTED, "ok": 1}, "plain"]},
        "auth": {"header": REDACTED, "other": "y", "items": [{"header": "h"}]},
        "creds": REDACTED,
    }
    assert echo["auth"] == arguments["auth"] and echo["creds"] == {"anything": 1}  # rules are per tool
    assert echo["Password"] == REDACTED
    assert wipe == {"a": REDACTED, "b": REDACTED}


@pytest_twisted.ensureDeferred
async def test_results_are_opt_in_redacted_and_capped(audit_log: Any, storage: str) -> None:
    audit = audit_log(results=["fx*"], max_result_bytes=120, max_argument_bytes=64)
    small = {"content": [{"type": "text", "text": "ok"}], "isError": False, "structuredContent": {"token": "abc"}}
    big = {"content": [{"type": "text", "text": "é" * 200}], "isError": False}
    rest = {"session_id": "s1", "result": "ok", "is_error": False, "content": [{"type": "text", "text": "ok"}]}
    audit.record(call_record(result=small, front="mcp"))
    audit.record(call_record(result=big, front="mcp"))
    audit.record(call_record(result=rest))
    audit.record(call_record(service="other", result=small, front="mcp"))
    audit.record(call_record(arguments={"password": "x" * 40, "text": "y" * 100}))
    await audit.flush()
    kept, cut, from_rest, other, long_arguments = stored(storage)

    assert kept["result"] == {**small, "structuredContent": {"token": REDACTED}}
    assert kept["result_bytes"] == len(json.dumps(small, separators=(",", ":")))
    full = json.dumps(big, separators=(",", ":"), ensure_ascii=False).encode()
    assert cut["result_truncated"] and cut["result_bytes"] == len(full)
    assert isinstance(cut["result"], str) and full.startswith(cut["result"].encode())
    assert 118 <= len(cut["result"].encode()) <= 120
    # A REST answer is stored as the MCP result it carries, as on /mcp.
    assert from_rest["result"] == {"content": [{"type": "text", "text": "ok"}], "isError": False}
    assert other["result"] is None and other["result_bytes"] == kept["result_bytes"]
    assert long_arguments["arguments_truncated"]
    assert long_arguments["arguments"].startswith('{"password":"[redacted]","text":"yyy')
    assert len(long_arguments["arguments"].encode()) == 64


# -- a writer that cannot keep up ----------------------------------------------------------------


class Blocked:
    """
    Opens the real storage, whose first insert waits until released.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.entered = threading.Event()
        self.release = threading.Event()

    def open(self) -> Storage:
        storage = open_storage(self.uri, create=True)
        insert = storage.insert

        def blocked(rows: Sequence[Sequence[Any]]) -> None:
            self.entered.set()
            assert self.release.wait(30), "never released"
            insert(rows)

        storage.insert = blocked  # type: ignore[method-assign]
        return storage


@pytest_twisted.ensureDeferred
async def test_a_full_queue_drops_and_counts_and_never_delays_a_call(live: Any, audit_log: Any, storage: str) -> None:
    blocked = Blocked(storage)
    audit = audit_log(opener=blocked.open, queue_size=3)
    gw = live({"fx": fixture_service()}, app_options={"observers": [audit], "audit": audit})
    warnings: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "mcpgateway.audit" and "dropped" in event.get("log_format", ""):
            warnings.append(event["log_format"])

    globalLogPublisher.addObserver(observe)
    try:
        response, _ = await gw.call("fx", "echo", "s1", {"text": "0"})
        assert response.code == 200
        await wait_until(blocked.entered.is_set)  # the writer holds call 0 and waits
        for number in range(1, 9):
            response, body = await gw.call("fx", "echo", "s1", {"text": str(number)})
            assert (response.code, body["result"]) == (200, str(number))
        assert not blocked.release.is_set()  # every call was answered while the writer was stuck
        assert drops(gw) == {"queue_full": 5.0, "write_failed": 0.0, "shutdown": 0.0}
        assert len(warnings) == 1  # at most once a minute
    finally:
        globalLogPublisher.removeObserver(observe)
        blocked.release.set()
    await audit.flush()
    assert [r["arguments"]["text"] for r in stored(storage)] == ["0", "1", "2", "3"]
    assert "mcpgateway_audit_records_total 4.0" in gw.app.metrics.render().decode()


@pytest_twisted.ensureDeferred
async def test_an_unreachable_storage_is_retried_and_counted(audit_log: Any, storage: str) -> None:
    failures = []

    def flaky() -> Storage:
        if len(failures) < 1:
            failures.append(1)
            raise OSError("the disk is on holiday")
        return open_storage(storage, create=True)

    audit = audit_log(opener=flaky)
    audit.record(call_record())
    await audit.flush()  # written after one retry (1 s backoff)
    assert audit.write_errors == 1 and audit.written == 1
    assert len(stored(storage)) == 1


# -- schema ----------------------------------------------------------------------------------------


def test_migrations_are_idempotent_and_a_newer_schema_is_refused(storage: str) -> None:
    writer = open_storage(storage, create=True)
    try:
        assert writer.migrate(time.time()) == 0
        assert writer.migrate(time.time()) == SCHEMA_VERSION
        writer.check()
        with writer.transaction():
            writer.connection.execute(writer._sql("INSERT INTO audit_schema (version, applied) VALUES (?, ?)"), (99, 0))
        with pytest.raises(StorageError, match="schema version 99, newer than"):
            writer.migrate(time.time())
    finally:
        writer.close()


def test_a_reader_never_creates_the_storage(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    with pytest.raises(StorageError, match="no audit database"):
        open_storage(f"sqlite:{path}", create=False)
    assert not path.exists()


# -- GET /audit ---------------------------------------------------------------------------------------


def principals() -> dict[str, Any]:
    return {"principals": [{"name": "agent7", "role": "agent", "token_hash": hash_token(AGENT_TOKEN)}]}


@pytest_twisted.ensureDeferred
async def test_get_audit_filters_and_pages_newest_first(live: Any, audit_log: Any) -> None:
    audit = audit_log()
    gw = live({"fx": fixture_service()}, app_options={"audit": audit}, server=principals())
    base = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    for index in range(25):
        audit.record(
            call_record(
                "echo" if index % 2 else "add",
                {"i": index},
                principal="alice" if index % 5 else "bob",
                service="fx" if index < 20 else "todo",
                outcome="ok" if index % 3 else "call_timeout",
                status=200 if index % 3 else 504,
                started=base + index * 60,
            )
        )
    await audit.flush()

    async def get(query: str, **kw: Any) -> Any:
        return await gw.request("GET", "/audit" + query, **kw)

    seen: list[int] = []
    cursor = None
    for _ in range(3):
        response, page = await get("?limit=10" + (f"&cursor={cursor}" if cursor else ""))
        assert response.code == 200
        seen += [record["arguments"]["i"] for record in page["records"]]
        cursor = page["next_cursor"]
    assert seen == list(range(24, -1, -1)) and cursor is None

    _, page = await get("?principal=bob")
    assert [r["arguments"]["i"] for r in page["records"]] == [20, 15, 10, 5, 0]
    _, page = await get("?service=fx&tool=echo&outcome=call_timeout")
    assert [r["arguments"]["i"] for r in page["records"]] == [15, 9, 3]
    _, page = await get("?outcome=call_timeout,ok&service=todo&principal=alice")
    assert [r["arguments"]["i"] for r in page["records"]] == [24, 23, 22, 21]
    _, page = await get(f"?since=2026-01-01T00:05:00Z&until={base + 8 * 60:.0f}")
    assert [r["arguments"]["i"] for r in page["records"]] == [7, 6, 5]
    _, page = await get("?since=2026-01-01T00:22:00&principal=&limit=2")  # no offset: UTC; empty: absent
    assert [r["arguments"]["i"] for r in page["records"]] == [24, 23] and page["next_cursor"]
    record = page["records"][0]
    assert (record["time"], record["outcome"], record["status"]) == ("2026-01-01T00:24:00.000Z", "call_timeout", 504)

    agent = {"headers": {b"Authorization": [f"Bearer {AGENT_TOKEN}".encode()]}}
    response, body = await get("", auth=None, **agent)
    assert (response.code, body["code"]) == (403, "forbidden")
    response, body = await get("", auth=("tester", "wrong"))
    assert (response.code, body["code"]) == (401, "unauthorized")


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("?limit=0", "invalid_limit"),
        ("?limit=1001", "invalid_limit"),
        ("?limit=ten", "invalid_limit"),
        ("?since=yesterday", "invalid_since"),
        ("?until=2026-13-01", "invalid_until"),
        ("?since=20&until=10", "invalid_until"),
        ("?cursor=bm9wZQ", "invalid_cursor"),
        ("?cursor=%25%25", "invalid_cursor"),
        ("?outcome=OK!", "invalid_outcome"),
        ("?service=a/b", "invalid_service"),
        ("?tool=", None),
        ("?principal=a%20b", "invalid_principal"),
        ("?limit=1&limit=2", "invalid_limit"),
        ("?servce=fx", "invalid_query"),
        ("?tool=%FF", "invalid_query"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_get_audit_refuses_bad_parameters(live: Any, tmp_path: Path, query: str, code: str | None) -> None:
    audit = AuditLog(AuditConfig(), f"sqlite:{tmp_path / 'audit.sqlite3'}", reactor)
    audit.start()
    try:
        await audit.flush()  # the file exists
        gw = live({}, app_options={"audit": audit})
        response, body = await gw.request("GET", "/audit" + query)
    finally:
        await audit.stop()
    if code is None:
        assert (response.code, body["records"], body["next_cursor"]) == (200, [], None)
    else:
        assert (response.code, body["code"]) == (400, code), body


@pytest_twisted.ensureDeferred
async def test_get_audit_when_off_or_unreadable(live: Any, tmp_path: Path) -> None:
    gw = live({})
    response, body = await gw.request("GET", "/audit")
    assert (response.code, body["code"]) == (404, "audit_disabled")
    nowhere = AuditLog(AuditConfig(), f"sqlite:{tmp_path / 'none.sqlite3'}", reactor)  # never started: no file
    gw = live({}, app_options={"audit": nowhere})
    response, body = await gw.request("GET", "/audit")
    assert (response.code, body["code"]) == (503, "audit_unavailable")
    assert response.headers.getRawHeaders(b"Retry-After") == [b"5"]


# -- mcp-gateway audit export -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_export_writes_json_lines_oldest_first(
    audit_log: Any, storage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = audit_log()
    base = 1_767_225_600.0
    for index in range(1005):  # more than one page of the reader
        audit.record(call_record(arguments={"i": index}, started=base + index, principal="bob" if index < 3 else "al"))
    await audit.flush()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"audit": {"storage": storage}}))

    assert auditcli.main(["export", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["arguments"]["i"] for line in lines] == list(range(1005))
    assert (
        auditcli.main(["export", "-c", str(config), "--since", str(base + 1), "--until", "2026-01-01T00:00:03Z"]) == 0
    )
    assert [json.loads(line)["arguments"]["i"] for line in capsys.readouterr().out.splitlines()] == [1, 2]
    assert auditcli.main(["export", "-c", str(config), "--principal", "bob", "--outcome", "ok"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3

    assert auditcli.main(["export", "-c", str(config), "--since", "soon"]) == 2
    assert "since: 'soon' is neither" in capsys.readouterr().err
    assert auditcli.main(["export", "-c", str(tmp_path / "missing.json")]) == 2
    config.write_text(json.dumps({"audit": {"storage": f"sqlite:{tmp_path / 'none.sqlite3'}"}}))
    assert auditcli.main(["export", "-c", str(config)]) == 1
    assert "no audit database at" in capsys.readouterr().err


# -- retention ------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_retention_prunes_old_records_on_the_clock(audit_log: Any, storage: str) -> None:
    clock = Clock()
    now = time.time()
    clock.advance(now)
    audit = audit_log(clock=clock, retain_days=30, prune_interval=3600)
    for age in (45, 31, 29, 1):
        audit.record(call_record(arguments={"age": age}, started=now - age * DAY))
    await audit.flush()
    assert [r["arguments"]["age"] for r in stored(storage)] == [45, 31, 29, 1]  # pruned at start, when empty

    clock.advance(3599)
    await audit.flush()
    assert len(stored(storage)) == 4  # not yet
    clock.advance(1)
    await audit.flush()
    assert [r["arguments"]["age"] for r in stored(storage)] == [29, 1]

    clock.advance(2 * DAY)  # 29 days old becomes 31
    await audit.flush()
    assert [r["arguments"]["age"] for r in stored(storage)] == [1]


@pytest_twisted.ensureDeferred
async def test_retain_days_zero_keeps_everything(audit_log: Any, storage: str) -> None:
    clock = Clock()
    clock.advance(time.time())
    audit = audit_log(clock=clock, retain_days=0)
    audit.record(call_record(started=0.0))
    clock.advance(365 * DAY)
    await audit.flush()
    assert len(stored(storage)) == 1
    assert not clock.getDelayedCalls()


# -- the gateway as a user runs it ----------------------------------------------------------------------


def test_twistd_writes_the_default_sqlite_file_and_export_reads_it(tmp_path: Path) -> None:
    port = free_port()
    tag = uuid.uuid4().hex
    services = {"fx": {"command": [sys.executable, str(Path(__file__).parent / "servers" / "fixture_server.py")]}}
    config = write_config(tmp_path / "config.json", port, services)
    env = environment(tag)
    command = [*twistd(), "-n", "--pidfile=", "mcpgateway", "--config", str(config)]
    with running(command, tmp_path, port, env, tag) as gateway:
        status, body = gateway.call("fx", "echo", "c1", ("admin", "s3cret"), text="hello", token="t0k")
        assert (status, body["result"]) == (200, "hello")
        exit_status, _ = gateway.stop()
        assert_orderly_exit(gateway, exit_status)
    # Written at stop at the latest; relative to the working directory.
    database = tmp_path / "state" / "audit.sqlite3"
    assert stat.S_IMODE(os.stat(database).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(database.parent).st_mode) == 0o700
    result = subprocess.run(
        [*mcp_gateway(), "audit", "export", "--config", "config.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert (record["principal"], record["service"], record["tool"], record["outcome"]) == ("admin", "fx", "echo", "ok")
    assert record["arguments"] == {"text": "hello", "token": REDACTED}
