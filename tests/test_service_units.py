"""
L{mcpgateway.children.service.Service} backoff and L{mcpgateway.sessions.SessionRegistry}
limits, with a L{Clock} and a fake C{spawn_child}: no process is started.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.defer import Deferred, TimeoutError, ensureDeferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure

import mcpgateway.children.service
import mcpgateway.children.workdirs
from mcpgateway.children.child import LEGACY, StartFailed
from mcpgateway.children.service import Service
from mcpgateway.config import SandboxPolicy, ServiceConfig, SessionConfig
from mcpgateway.errors import GatewayError, LimitReached, NotFound, ServiceUnavailable
from mcpgateway.lib.deferreds import Shared
from mcpgateway.mcp.exits import ChildExited, ExitInfo
from mcpgateway.mcp.jsonrpc import RPCError
from mcpgateway.policy.auth import Principal
from mcpgateway.sessions import Session, SessionRegistry

SECRET_PROGRAM = "/opt/secret-bin/tool"
SECRET_ARGUMENT = "--api-key=hunter2"

ALICE = Principal("alice", "agent")
BOB = Principal("bob", "agent")
ROOT = Principal("root", "admin")


# -- helpers -------------------------------------------------------------------------------


def outcome(d: Deferred[Any]) -> Any:
    """
    @return: C{d}'s result or L{Failure} (consumed); C{d} must have fired.
    """
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


def unavailable(d: Deferred[Any]) -> ServiceUnavailable:
    result = outcome(d)
    assert isinstance(result, Failure), f"expected ServiceUnavailable, got {result!r}"
    assert isinstance(result.value, ServiceUnavailable), result
    return result.value


class FakeChild:
    """
    What L{Service} uses of a L{mcpgateway.children.child.Child}.
    """

    def __init__(self, workdir: str | None, now: float) -> None:
        self.era = LEGACY
        self.pid = 4711
        self.started_at = now
        self.ready_at = now + 0.01
        self.workdir = workdir
        self.ended: Shared[ExitInfo] = Shared()
        self.closing = False
        self.alive = True
        self.protocol = SimpleNamespace(stderr=SimpleNamespace(total_bytes=10))

    def when_ended(self) -> Deferred[ExitInfo]:
        return self.ended.wait()

    def end(self, info: ExitInfo | None = None) -> None:
        self.alive = False
        self.ended.fire(info or ExitInfo(0, None, None, ""))

    def list_tools(self, timeout: float) -> Deferred[list[dict[str, Any]]]:
        self.listing = Deferred[list[dict[str, Any]]]()
        self.list_timeout = timeout
        return self.listing

    def close(self, grace: float) -> Deferred[ExitInfo]:
        self.closing = True
        self.end()
        return self.ended.wait()


class FakeSpawn:
    """
    Stands in for C{spawn_child}: fails with L{StartFailed} unless told to succeed.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[dict[str, Any]] = []
        self.succeed = False
        self.children: list[FakeChild] = []

    async def __call__(
        self,
        reactor: Any,
        clock: Any,
        label: str,
        executable: str,
        args: list[str],
        env: Any,
        workdir: str | None,
        **kw: Any,
    ) -> FakeChild:
        # The command follows the exec chain's last "--".
        command = tuple(args[len(args) - args[::-1].index("--") :]) if "--" in args else tuple(args)
        self.calls.append({"label": label, "command": command, "args": args, "workdir": workdir, **kw})
        if not self.succeed:
            raise StartFailed("boom", ExitInfo(2, None, None, "stderr text"), "stderr text")
        child = FakeChild(workdir, self.clock.seconds())
        self.children.append(child)
        return child


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeSpawn:
    clock = Clock()
    spawn = FakeSpawn(clock)
    monkeypatch.setattr(mcpgateway.children.service, "spawn_child", spawn)
    # Work directories are removed in a thread; here, at once.
    monkeypatch.setattr(mcpgateway.children.workdirs, "deferToThread", lambda f, *a, **kw: maybeDeferred(f, *a, **kw))
    return spawn


@pytest.fixture
def make_service(fake: FakeSpawn, tmp_path: Path) -> Callable[..., Service]:
    def make(random_value: float = 1.0, **settings: Any) -> Service:
        values: dict[str, Any] = {
            "backoff_initial": 1.0,
            "backoff_max": 8.0,
            "backoff_reset": 30.0,
            **settings,
        }
        config = ServiceConfig(name="todo", command=(SECRET_PROGRAM, SECRET_ARGUMENT), description="todos", **values)
        return Service(
            config, MemoryReactor(), fake.clock, str(tmp_path / "sandbox"), random_source=lambda: random_value
        )

    return make


def spawn(service: Service) -> Deferred[Any]:
    return ensureDeferred(service.spawn())


# -- backoff -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("random_value", "expected"), [(1.0, 4.0), (0.0, 2.0), (0.5, 3.0)])
def test_first_failure_retry_after_within_half_and_full_initial(
    make_service: Callable[..., Service], fake: FakeSpawn, random_value: float, expected: float
) -> None:
    service = make_service(random_value, backoff_initial=4.0, backoff_max=60.0)
    error = unavailable(spawn(service))
    assert error.retry_after == pytest.approx(expected)
    assert 2.0 <= error.retry_after <= 4.0
    assert error.status == 503
    assert error.code == "service_unavailable"
    assert "boom" in error.message
    assert error.details["service"] == "todo"
    assert error.details["stderr_tail"] == "stderr text"
    assert error.details["exit_status"] == 2
    assert service.failures == 1
    assert service.spawns == 1
    assert len(fake.calls) == 1
    assert service.last_failure is error


def test_failed_start_removes_its_workdir(
    make_service: Callable[..., Service], fake: FakeSpawn, tmp_path: Path
) -> None:
    service = make_service()
    unavailable(spawn(service))
    workdir = fake.calls[0]["workdir"]
    assert workdir.startswith(str(tmp_path / "sandbox" / "todo-"))
    assert not os.path.exists(workdir)
    assert os.listdir(tmp_path / "sandbox") == [".cache"]  # the service's cache stays (npx, uvx)
    assert os.listdir(tmp_path / "sandbox" / ".cache") == ["todo"]


def test_fixed_working_dir_is_used_and_kept(fake: FakeSpawn, tmp_path: Path) -> None:
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    config = ServiceConfig(name="todo", command=("p",), sandbox=SandboxPolicy(working_dir=str(fixed)))
    service = Service(config, MemoryReactor(), fake.clock, str(tmp_path / "sandbox"), random_source=lambda: 1.0)
    unavailable(spawn(service))
    assert fake.calls[0]["workdir"] == str(fixed)
    assert fixed.is_dir()
    assert os.listdir(tmp_path / "sandbox") == [".cache"]  # no private directory, only the cache


def test_backing_off_fails_at_once_without_spawning(make_service: Callable[..., Service], fake: FakeSpawn) -> None:
    service = make_service(1.0, backoff_initial=4.0)
    first = unavailable(spawn(service))
    fake.clock.advance(1.5)
    second = unavailable(spawn(service))
    assert len(fake.calls) == 1
    assert service.spawns == 1
    assert service.failures == 1
    assert second.retry_after == pytest.approx(2.5)
    assert second.message == first.message
    assert second.details["service"] == "todo"
    assert second.details["stderr_tail"] == "stderr text"


def test_after_retry_at_it_spawns_again(make_service: Callable[..., Service], fake: FakeSpawn) -> None:
    service = make_service(1.0, backoff_initial=4.0)
    unavailable(spawn(service))
    fake.clock.advance(3.999)
    unavailable(spawn(service))
    assert len(fake.calls) == 1
    fake.clock.advance(0.001)
    unavailable(spawn(service))
    assert len(fake.calls) == 2
    assert service.failures == 2


@pytest.mark.parametrize(
    ("random_value", "delays"),
    [(1.0, [1, 2, 4, 8, 8, 8]), (0.0, [0.5, 1, 2, 4, 4, 4])],
)
def test_delays_double_up_to_backoff_max(
    make_service: Callable[..., Service], fake: FakeSpawn, random_value: float, delays: list[float]
) -> None:
    service = make_service(random_value, backoff_initial=1.0, backoff_max=8.0)
    seen = []
    for _ in delays:
        error = unavailable(spawn(service))
        seen.append(error.retry_after)
        fake.clock.advance(error.retry_after)
    assert seen == pytest.approx(delays)
    assert len(fake.calls) == len(delays)
    assert service.failures == len(delays)


def test_backoff_survives_very_many_failures(make_service: Callable[..., Service], fake: FakeSpawn) -> None:
    service = make_service(1.0, backoff_initial=1.0, backoff_max=8.0)
    for _ in range(1030):
        result = outcome(spawn(service))
        assert isinstance(result, Failure)
        assert isinstance(result.value, ServiceUnavailable), result.value
        assert result.value.retry_after is not None
        assert result.value.retry_after <= 8.0
        fake.clock.advance(8.0)


def test_state_is_failing_while_backing_off(make_service: Callable[..., Service], fake: FakeSpawn) -> None:
    service = make_service(1.0, backoff_initial=4.0)
    assert service.state == "idle"
    unavailable(spawn(service))
    assert service.state == "failing"
    view = service.describe()
    assert view["state"] == "failing"
    assert "boom" in view["last_error"]
    assert view["retry_after"] == 4.0
    fake.clock.advance(1)
    assert service.describe()["retry_after"] == 3.0
    fake.clock.advance(3)
    assert service.state == "idle"
    assert "last_error" not in service.describe()


def test_describe_never_contains_the_command(make_service: Callable[..., Service], fake: FakeSpawn) -> None:
    service = make_service()
    views = [service.describe()]
    unavailable(spawn(service))
    views.append(service.describe())
    fake.clock.advance(10)
    fake.succeed = True
    outcome(spawn(service))
    views.append(service.describe())
    assert [v["state"] for v in views] == ["idle", "failing", "ready"]
    for view in views:
        text = json.dumps(view)
        assert SECRET_PROGRAM not in text
        assert "secret-bin" not in text
        assert "hunter2" not in text


def test_describe_hides_the_program_when_it_cannot_be_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class NoSpawn(MemoryReactor):
        def spawnProcess(self, *args: Any, **kwargs: Any) -> Any:
            raise OSError(2, "No such file or directory")

    monkeypatch.setattr(mcpgateway.children.workdirs, "deferToThread", lambda f, *a, **kw: maybeDeferred(f, *a, **kw))
    config = ServiceConfig(name="todo", command=(SECRET_PROGRAM, SECRET_ARGUMENT))
    clock = Clock()
    service = Service(config, NoSpawn(), clock, str(tmp_path / "sandbox"), random_source=lambda: 1.0)
    error = unavailable(spawn(service))
    assert "cannot start" in error.message
    assert SECRET_PROGRAM not in json.dumps(service.describe())


def test_success_then_backoff_reset_clears_failures(make_service: Callable[..., Service], fake: FakeSpawn) -> None:
    service = make_service(1.0, backoff_initial=1.0, backoff_reset=30.0)
    unavailable(spawn(service))
    fake.clock.advance(1)
    unavailable(spawn(service))
    fake.clock.advance(2)
    assert service.failures == 2
    fake.succeed = True
    child = outcome(spawn(service))
    assert isinstance(child, FakeChild)
    assert service.children == {child}
    assert service.era is LEGACY
    assert service.state == "ready"
    assert service.describe()["protocol"] == "legacy"
    assert service.describe()["children"] == 1
    fake.clock.advance(29.9)
    assert service.failures == 2
    fake.clock.advance(0.1)
    assert service.failures == 0
    assert fake.clock.getDelayedCalls() == []
    # A later failure starts from the initial delay again.
    fake.succeed = False
    assert unavailable(spawn(service)).retry_after == pytest.approx(1.0)


def test_child_ending_early_keeps_the_failure_count(
    make_service: Callable[..., Service], fake: FakeSpawn, tmp_path: Path
) -> None:
    service = make_service(1.0, backoff_reset=30.0)
    unavailable(spawn(service))
    fake.clock.advance(1)
    fake.succeed = True
    child = outcome(spawn(service))
    assert os.path.isdir(child.workdir)
    fake.clock.advance(5)
    child.end()
    assert service.children == set()
    assert fake.clock.getDelayedCalls() == []
    assert not os.path.exists(child.workdir)
    fake.clock.advance(60)
    assert service.failures == 1


def test_spawn_passes_the_service_settings(make_service: Callable[..., Service], fake: FakeSpawn) -> None:
    service = make_service(
        max_line_bytes=1234, handshake_timeout=9.0, startup_timeout=70.0, discover_timeout=0.5, close_grace=0.25
    )
    fake.succeed = True
    outcome(spawn(service))
    outcome(spawn(service))
    first, second = fake.calls
    call = second
    assert call["command"] == (SECRET_PROGRAM, SECRET_ARGUMENT)
    assert call["label"] == "todo"
    assert (call["max_line"], call["handshake_timeout"], call["discover_timeout"], call["close_grace"]) == (
        1234,
        9.0,
        0.5,
        0.25,
    )
    # The first start may have to download the server: it gets startup_timeout.
    assert first["handshake_timeout"] == 70.0
    assert first["hint"] is None  # protocol "auto": no era known yet
    outcome(spawn(service))
    assert fake.calls[1]["hint"] is LEGACY  # remembered from the first child


def test_spawn_refused_after_stop(make_service: Callable[..., Service], fake: FakeSpawn) -> None:
    service = make_service()
    assert outcome(ensureDeferred(service.stop())) is None
    error = unavailable(spawn(service))
    assert "shutting down" in error.message
    assert fake.calls == []


def test_tools_during_backoff_fails_at_once_then_recovers(
    make_service: Callable[..., Service], fake: FakeSpawn
) -> None:
    service = make_service(1.0, backoff_initial=1.0)
    unavailable(spawn(service))
    # Backing off: the fill fails synchronously and must not be kept as the
    # fill "under way" (it would answer every later /tools with this 503).
    assert unavailable(service.tools()).retry_after == pytest.approx(1.0)
    assert unavailable(service.tools()).retry_after == pytest.approx(1.0)
    fake.clock.advance(1)
    fake.succeed = True
    listed = service.tools()
    [lister] = fake.children
    lister.listing.callback([{"name": "echo"}])
    assert outcome(listed) == [{"name": "echo"}]
    assert service.declares("echo")
    assert lister.closing, "the short-lived lister child is closed"


@pytest.mark.parametrize(
    ("failure", "status", "words"),
    [
        (TimeoutError(), 504, "within 7 s"),
        (RPCError(-32603, "boom"), 502, "JSON-RPC error -32603"),
        (ChildExited(ExitInfo(3, None, None, "tail")), 502, "exited with status 3"),
    ],
)
def test_tool_listing_failures_are_gateway_errors(
    make_service: Callable[..., Service], fake: FakeSpawn, failure: Exception, status: int, words: str
) -> None:
    service = make_service(call_timeout=7.0)
    fake.succeed = True
    listed = service.tools()
    [lister] = fake.children
    assert lister.list_timeout == 7.0
    lister.listing.errback(failure)
    result = outcome(listed)
    assert isinstance(result, Failure) and isinstance(result.value, GatewayError)
    assert (result.value.status, words in result.value.message) == (status, True), result.value.message
    # Not cached: the next /tools tries again.
    service.tools()
    assert len(fake.children) == 2


def test_unusable_sandbox_dir_is_a_start_failure(fake: FakeSpawn, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = ServiceConfig(name="todo", command=("prog",), description="", backoff_initial=1.0)
    service = Service(config, MemoryReactor(), fake.clock, str(blocker / "sandbox"), random_source=lambda: 1.0)
    error = unavailable(spawn(service))
    assert "cannot set up the sandbox" in error.message
    assert service.failures == 1
    assert fake.calls == []


def test_warm_child_dying_idle_backs_off_instead_of_respawning(
    make_service: Callable[..., Service], fake: FakeSpawn
) -> None:
    service = make_service(1.0, prewarm=1, backoff_initial=1.0)
    fake.succeed = True
    service.refill_pool()
    [first] = fake.children
    assert service.pool_size == 1
    first.end(ExitInfo(1, None, None, "ImportError"))
    assert service.pool_size == 0
    assert len(fake.calls) == 1, "no immediate respawn"
    assert service.failures == 1
    assert "warm pool" in service.describe()["last_error"]
    fake.clock.advance(0.99)
    assert len(fake.calls) == 1
    fake.clock.advance(0.01)
    assert len(fake.calls) == 2 and service.pool_size == 1
    # The replacement dies too: the delay doubles.
    fake.children[-1].end(ExitInfo(1, None, None, ""))
    fake.clock.advance(1.99)
    assert len(fake.calls) == 2
    fake.clock.advance(0.01)
    assert len(fake.calls) == 3


def test_closing_a_warm_child_refills_without_backoff(make_service: Callable[..., Service], fake: FakeSpawn) -> None:
    service = make_service(prewarm=1)
    fake.succeed = True
    service.refill_pool()
    fake.children[0].close(0.1)
    assert service.failures == 0
    assert len(fake.calls) == 2 and service.pool_size == 1


# -- sessions ------------------------------------------------------------------------------------


def registry(**settings: Any) -> SessionRegistry:
    return SessionRegistry(SessionConfig(**settings))


def test_open_creates_then_finds() -> None:
    sessions = registry()
    first = sessions.open("s1", ALICE, 100.0, 60.0, {"caller": "x"})
    assert len(sessions) == 1
    assert sessions.get("s1") is first
    again = sessions.open("s1", ALICE, 130.0, 90.0, {})
    assert again is first
    assert again.last_accessed == 130.0
    assert again.created_at == 100.0
    assert again.timeout == 90.0
    assert again.metadata == {"caller": "x"}  # empty metadata keeps the old
    sessions.open("s1", ALICE, 131.0, 90.0, {"caller": "y"})
    assert first.metadata == {"caller": "y"}


def test_total_limit_raises_before_creating() -> None:
    sessions = registry(max_total_sessions=2)
    sessions.open("a", ALICE, 0, 60, {})
    sessions.open("b", ALICE, 0, 60, {})
    with pytest.raises(LimitReached) as info:
        sessions.open("c", ALICE, 0, 60, {})
    assert info.value.code == "session_limit"
    assert info.value.status == 429
    assert info.value.retry_after == 1
    assert "2" in info.value.message
    assert len(sessions) == 2
    assert sessions.get("c") is None
    # An existing session is still found at the limit.
    assert sessions.open("a", ALICE, 5, 60, {}).last_accessed == 5


def test_total_limit_frees_after_remove() -> None:
    sessions = registry(max_total_sessions=1)
    only = sessions.open("a", ALICE, 0, 60, {})
    sessions.remove(only)
    assert sessions.open("b", ALICE, 0, 60, {}).id == "b"


def test_reserve_counts_holding_and_spawning_sessions() -> None:
    sessions = registry(max_sessions_per_service=2)
    a = sessions.open("a", ALICE, 0, 60, {})
    b = sessions.open("b", ALICE, 0, 60, {})
    c = sessions.open("c", ALICE, 0, 60, {})
    other = sessions.open("other", ALICE, 0, 60, {})
    a.children["todo"] = object()  # type: ignore[assignment]
    other.children["notes"] = object()  # type: ignore[assignment]
    sessions.reserve(c, "todo")  # one holds it
    b.spawning["todo"] = Shared()
    with pytest.raises(LimitReached) as info:
        sessions.reserve(c, "todo")
    assert info.value.code == "session_limit"
    assert "todo" in info.value.message
    sessions.reserve(c, "notes")  # another service is counted apart
    del b.spawning["todo"]
    sessions.reserve(c, "todo")


def test_holds() -> None:
    session = Session("s", "alice", 0, 60, {})
    assert not session.holds("todo")
    session.spawning["todo"] = Shared()
    assert session.holds("todo")
    del session.spawning["todo"]
    session.children["todo"] = object()  # type: ignore[assignment]
    assert session.holds("todo")


def test_expired_only_idle_sessions_past_their_timeout() -> None:
    sessions = registry()
    old = sessions.open("old", ALICE, 0, 10, {})
    sessions.open("fresh", ALICE, 5, 10, {})
    assert sessions.expired(10) == []  # exactly at the timeout: not yet
    assert sessions.expired(10.5) == [old]
    assert {s.id for s in sessions.expired(16)} == {"old", "fresh"}


def test_expired_never_returns_a_busy_session() -> None:
    sessions = registry()
    calling = sessions.open("calling", ALICE, 0, 10, {})
    starting = sessions.open("starting", ALICE, 0, 10, {})
    call: Deferred[str] = Deferred()
    assert calling.track(call) is call
    starting.spawning["todo"] = Shared()
    assert calling.busy and starting.busy
    assert sessions.expired(1000) == []
    call.callback("done")
    assert not calling.busy
    assert sessions.expired(1000) == [calling]
    del starting.spawning["todo"]
    assert len(sessions.expired(1000)) == 2


def test_track_untracks_on_failure() -> None:
    session = Session("s", "alice", 0, 10, {})
    call: Deferred[str] = Deferred()
    session.track(call)
    call.errback(RuntimeError("x"))
    assert not session.busy
    assert isinstance(outcome(call), Failure)


def test_discard_if_empty() -> None:
    sessions = registry()
    empty = sessions.open("empty", ALICE, 0, 10, {})
    holding = sessions.open("holding", ALICE, 0, 10, {})
    holding.children["todo"] = object()  # type: ignore[assignment]
    busy = sessions.open("busy", ALICE, 0, 10, {})
    busy.track(Deferred())
    for session in (empty, holding, busy):
        sessions.discard_if_empty(session)
    assert sessions.get("empty") is None
    assert sessions.get("holding") is holding
    assert sessions.get("busy") is busy
    assert len(sessions) == 2


def test_remove_forgets_only_the_same_session() -> None:
    sessions = registry()
    old = sessions.open("s", ALICE, 0, 10, {})
    sessions.remove(old)
    new = sessions.open("s", ALICE, 1, 10, {})
    sessions.remove(old)  # a stale object does not remove its successor
    assert sessions.get("s") is new
    sessions.discard_if_empty(old)
    assert sessions.get("s") is new


def test_session_describe() -> None:
    session = Session("s", "alice", 1_700_000_000.25, 60, {"k": "v"})
    session.children["b"] = object()  # type: ignore[assignment]
    session.children["a"] = object()  # type: ignore[assignment]
    view = session.describe(1_700_000_020.25)
    assert view["created_at"] == "2023-11-14T22:13:20.250Z"
    assert view["time_remaining"] == 40.0
    assert view["services"] == ["a", "b"]
    assert view["service_name"] == "a"
    assert view["metadata"] == {"k": "v"}
    assert session.describe(1_700_001_000)["time_remaining"] == 0.0


def test_sessions_belong_to_their_principal() -> None:
    sessions = SessionRegistry(SessionConfig())
    mine = sessions.open("mine", ALICE, 0, 60, {})
    assert mine.owner == "alice"
    with pytest.raises(NotFound) as info:
        sessions.open("mine", BOB, 1, 60, {})
    assert info.value.code == "session_not_found"
    assert sessions.get("mine", BOB) is None
    assert sessions.get("mine", ALICE) is mine
    assert sessions.get("mine", ROOT) is mine
    assert sessions.open("mine", ROOT, 2, 60, {}) is mine, "an admin may use any session"
    sessions.open("theirs", BOB, 0, 60, {})
    assert [s.id for s in sessions.visible_to(ALICE)] == ["mine"]
    assert sorted(s.id for s in sessions.visible_to(ROOT)) == ["mine", "theirs"]
