"""
L{mcpgateway.policy.ratelimit}: limits, headers, groups and keys on memory storage;
Redis hits in threads (never on the reactor); a real C{redis-server} shared by
two processes; and a Redis that is down or hangs.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import LoopingCall
from twisted.logger import globalLogPublisher

from mcpgateway.config import ConfigError, RateLimitConfig
from mcpgateway.observe.logs import configure
from mcpgateway.policy import ratelimit
from mcpgateway.policy import storage as policy_storage
from mcpgateway.policy.ratelimit import (
    AUTH_FAILURE_LIMIT,
    CALL_LIMIT,
    DEFAULT_LIMITS,
    GROUPS,
    SESSION_DELETE_LIMIT,
    STORAGE_URI,
    TOOLS_LIMIT,
    Decision,
    RateLimiter,
)

from .conftest import sleep
from .redis_fixture import RedisServer, free_port, redis_server_at

ROOT = Path(__file__).parent.parent


@dataclass(frozen=True)
class Config(RateLimitConfig):
    """
    The section with the key this module adds (until config.py has it).
    """

    auth_failure_limit: str = AUTH_FAILURE_LIMIT


def now(deferred: Deferred[Decision]) -> Decision:
    """
    @return: The decision of a hit that fired at once (memory storage).
    """
    results: list[Decision] = []
    deferred.addCallback(results.append)
    assert results, "the hit did not fire at once"
    return results[0]


def hits(limiter: RateLimiter, group: str, key: str, count: int) -> list[Decision]:
    return [now(limiter.hit(group, key)) for _ in range(count)]


@pytest.fixture
def limiters() -> Iterator[Callable[..., RateLimiter]]:
    """
    Build limiters from L{Config} keywords; closed at the end.
    """
    made: list[RateLimiter] = []

    def make(**kw: Any) -> RateLimiter:
        options = {key: kw.pop(key) for key in ("clock", "storage_retry_interval", "hit_timeout") if key in kw}
        limiter = RateLimiter(Config(**kw), **options)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        limiter.close()


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """
    Record each L{deferToThread} of the counters (and still run it).
    """
    calls: list[str] = []
    real = policy_storage.deferToThread

    def record(f: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
        calls.append(getattr(f, "__name__", repr(f)))
        return real(f, *args, **kw)

    monkeypatch.setattr(policy_storage, "deferToThread", record)
    return calls


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """
    The messages the module logs at warning level or above.
    """
    configure("INFO")
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "mcpgateway.ratelimit" and event["log_level"].name in ("warn", "error"):
            from twisted.logger import formatEvent

            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def key() -> str:
    return f"principal:{uuid.uuid4().hex[:8]}"


# -- memory storage ------------------------------------------------------------------


def test_limit_enforced(limiters: Callable[..., RateLimiter]) -> None:
    limiter = limiters(call_limit="3 per hour")
    decisions = hits(limiter, "call", "principal:alice", 5)
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0, 0]
    assert {d.limit for d in decisions} == {3}
    assert [d.retry_after for d in decisions[:3]] == [0, 0, 0]
    assert 3590 < decisions[3].retry_after <= 3600
    assert abs(decisions[3].reset_at - (time.time() + decisions[3].retry_after)) < 1


def test_headers(limiters: Callable[..., RateLimiter]) -> None:
    limiter = limiters(call_limit="2/minute")
    first, second, refused = hits(limiter, "call", "principal:alice", 3)
    reset = str(int(first.reset_at) + 1).encode()
    assert first.headers() == [
        (b"X-RateLimit-Limit", b"2"),
        (b"X-RateLimit-Remaining", b"1"),
        (b"X-RateLimit-Reset", reset),
    ]
    assert dict(second.headers())[b"X-RateLimit-Remaining"] == b"0"
    assert b"Retry-After" not in dict(second.headers())
    headers = dict(refused.headers())
    assert headers[b"X-RateLimit-Remaining"] == b"0"
    assert headers[b"X-RateLimit-Reset"] == reset
    assert 55 <= int(headers[b"Retry-After"]) <= 60


def test_headers_of_a_decision() -> None:
    refused = Decision(allowed=False, limit=10, remaining=0, reset_at=1000.2, retry_after=0.01)
    assert refused.headers() == [
        (b"X-RateLimit-Limit", b"10"),
        (b"X-RateLimit-Remaining", b"0"),
        (b"X-RateLimit-Reset", b"1001"),
        (b"Retry-After", b"1"),  # never 0: "retry now" would be a lie
    ]
    assert Decision(True, 0, 0, 0.0).headers() == []  # no limit applies
    with pytest.raises(AttributeError):
        refused.allowed = True  # type: ignore[misc]


def test_groups_independent(limiters: Callable[..., RateLimiter]) -> None:
    limiter = limiters(
        default_limits=["1 per hour"], call_limit="1 per hour", tools_limit="1 per hour", session_delete_limit=""
    )
    for group in ("call", "tools", "default", "session_delete"):
        assert now(limiter.hit(group, "principal:alice")).allowed, group
    for group in ("call", "tools", "default", "session_delete"):
        assert not now(limiter.hit(group, "principal:alice")).allowed, group


def test_keys_independent(limiters: Callable[..., RateLimiter]) -> None:
    limiter = limiters(call_limit="1 per hour")
    assert now(limiter.hit("call", "principal:alice")).allowed
    assert not now(limiter.hit("call", "principal:alice")).allowed
    assert now(limiter.hit("call", "principal:bob")).allowed
    assert now(limiter.hit("call", "addr:192.0.2.1")).allowed
    # "/" separates the parts of a counter's name: keys cannot collide through it
    for odd in ("a/b", "a%2Fb", "a%252Fb", "a", "a/", "addr:::1"):
        assert now(limiter.hit("call", odd)).allowed, odd


def test_disabled(limiters: Callable[..., RateLimiter], threads: list[str]) -> None:
    # a Redis nobody listens on: nothing is ever connected when disabled
    limiter = limiters(enabled=False, call_limit="1 per hour", storage_uri=f"redis://127.0.0.1:{free_port()}/0")
    for group in GROUPS:
        for decision in hits(limiter, group, "principal:alice", 5):
            assert decision.allowed
            assert decision.headers() == []
    assert threads == []


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"call_limit": "10 per fortnight"}, "rate_limiting.call_limit: cannot parse '10 per fortnight'"),
        ({"tools_limit": "ten per minute"}, "rate_limiting.tools_limit: cannot parse 'ten per minute'"),
        ({"session_delete_limit": "5"}, "rate_limiting.session_delete_limit: cannot parse '5'"),
        ({"default_limits": ["200 per day", "50 per hr"]}, "rate_limiting.default_limits[1]: cannot parse '50 per hr'"),
        ({"auth_failure_limit": "20 per min"}, "rate_limiting.auth_failure_limit: cannot parse '20 per min'"),
        ({"call_limit": "1/second; 5 per blue moon"}, "rate_limiting.call_limit: cannot parse"),
        ({"call_limit": "0 per minute"}, "rate_limiting.call_limit: '0 per minute' allows no request"),
        ({"storage_uri": "mongodb://localhost:27017"}, "rate_limiting.storage_uri: unsupported storage"),
        ({"storage_uri": "async+redis://localhost:6379"}, "rate_limiting.storage_uri: unsupported storage"),
        ({"storage_uri": "localhost:6379"}, "rate_limiting.storage_uri: unsupported storage"),
        ({"storage_uri": "redis://localhost:port/0"}, "rate_limiting.storage_uri: cannot use"),
    ],
)
def test_errors_name_the_key(keywords: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RateLimiter(Config(**keywords))
    assert str(caught.value).startswith(message), str(caught.value)


def test_errors_even_when_disabled() -> None:
    with pytest.raises(ConfigError, match=r"rate_limiting\.call_limit"):
        RateLimiter(Config(enabled=False, call_limit="often"))


def test_storage_error_hides_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        RateLimiter(Config(storage_uri="memcached://user:hunter2@cache:11211"))
    assert "hunter2" not in str(caught.value)
    assert "user:***@cache:11211" in str(caught.value)


def test_empty_storage_uri_is_memory(limiters: Callable[..., RateLimiter]) -> None:
    limiter = limiters(storage_uri="", call_limit="1 per hour")
    assert not limiter.shared
    assert [d.allowed for d in hits(limiter, "call", "principal:alice", 2)] == [True, False]


def test_tightest_of_many_decides(limiters: Callable[..., RateLimiter]) -> None:
    limiter = limiters(default_limits=["100 per hour", "3 per minute", "1000 per day"])
    decisions = hits(limiter, "default", "principal:alice", 4)
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [(d.limit, d.remaining) for d in decisions] == [(3, 2), (3, 1), (3, 0), (3, 0)]
    assert 0 < decisions[3].retry_after <= 60


def test_several_limits_in_one_string(limiters: Callable[..., RateLimiter]) -> None:
    limiter = limiters(call_limit="5 per hour; 2/minute, 10 per day")
    assert [str(item) for item in limiter.limits("call")] == ["2 per 1 minute", "5 per 1 hour", "10 per 1 day"]
    assert [d.allowed for d in hits(limiter, "call", "principal:alice", 3)] == [True, True, False]


def test_duplicate_limits_count_once(limiters: Callable[..., RateLimiter]) -> None:
    limiter = limiters(default_limits=["2 per minute", "2/minute", "2 per 60 seconds"])
    assert len(limiter.limits("default")) == 1
    assert [d.allowed for d in hits(limiter, "default", "principal:alice", 3)] == [True, True, False]


def test_refusal_waits_for_the_exhausted_limit_that_resets_last(limiters: Callable[..., RateLimiter]) -> None:
    limiter = limiters(call_limit="1/second; 1/hour")
    allowed, refused = hits(limiter, "call", "principal:alice", 2)
    assert allowed.allowed
    assert not refused.allowed
    assert refused.limit == 1
    assert refused.retry_after > 3500  # retrying after 1 s would be refused by the hourly limit


def test_refused_requests_do_not_spend_longer_budgets(limiters: Callable[..., RateLimiter]) -> None:
    limiter = limiters(call_limit="1/second; 5/hour")
    decisions = hits(limiter, "call", "principal:alice", 6)
    assert [d.allowed for d in decisions] == [True] + [False] * 5
    hourly = limiter.limits("call")[1]
    assert limiter._counters.primary is not None
    assert limiter._counters.primary.get_window_stats(hourly, "call", "principal:alice").remaining == 4


def test_own_limit_replaces_the_defaults(limiters: Callable[..., RateLimiter]) -> None:
    limiter = limiters(default_limits=["1 per hour"], call_limit="3 per hour", tools_limit="")
    assert [str(item) for item in limiter.limits("call")] == ["3 per 1 hour"]
    assert [d.allowed for d in hits(limiter, "call", "principal:alice", 4)] == [True, True, True, False]
    # no own limit: the defaults apply
    assert [str(item) for item in limiter.limits("tools")] == ["1 per 1 hour"]
    assert [d.allowed for d in hits(limiter, "tools", "principal:alice", 2)] == [True, False]


def test_no_limit_at_all(limiters: Callable[..., RateLimiter]) -> None:
    limiter = limiters(default_limits=[], call_limit="1 per hour")
    assert limiter.limits("default") == ()
    for decision in hits(limiter, "default", "principal:alice", 50):
        assert decision.allowed
        assert decision.headers() == []


def test_auth_failure(limiters: Callable[..., RateLimiter]) -> None:
    # without the key (today's RateLimitConfig): AUTH_FAILURE_LIMIT
    limiter = RateLimiter(RateLimitConfig())
    try:
        assert [str(item) for item in limiter.limits("auth_failure")] == ["20 per 1 minute"]
        decisions = hits(limiter, "auth_failure", "addr:192.0.2.7", 21)
        assert [d.allowed for d in decisions] == [True] * 20 + [False]
        assert now(limiter.hit("auth_failure", "addr:192.0.2.8")).allowed
    finally:
        limiter.close()
    limiter = limiters(auth_failure_limit="2 per hour", default_limits=["1 per hour"])
    assert [d.allowed for d in hits(limiter, "auth_failure", "addr:192.0.2.7", 3)] == [True, True, False]


def test_peek_does_not_count(limiters: Callable[..., RateLimiter]) -> None:
    limiter = limiters(auth_failure_limit="2 per hour")
    for _ in range(5):
        peeked = now(limiter.peek("auth_failure", "addr:192.0.2.7"))
        assert (peeked.allowed, peeked.remaining) == (True, 2)
    hits(limiter, "auth_failure", "addr:192.0.2.7", 2)
    peeked = now(limiter.peek("auth_failure", "addr:192.0.2.7"))
    assert not peeked.allowed
    assert peeked.retry_after > 3500
    assert b"Retry-After" in dict(peeked.headers())


def test_unknown_group(limiters: Callable[..., RateLimiter]) -> None:
    limiter = limiters()
    with pytest.raises(ValueError, match="unknown rate-limit group 'calls'"):
        limiter.hit("calls", "principal:alice")


def test_module_defaults(limiters: Callable[..., RateLimiter]) -> None:
    """
    The values RateLimitConfig should default to: they parse, and each group
    gets its own limit (the defaults do not add to it).
    """
    limiter = limiters(
        default_limits=DEFAULT_LIMITS,
        tools_limit=TOOLS_LIMIT,
        call_limit=CALL_LIMIT,
        session_delete_limit=SESSION_DELETE_LIMIT,
        storage_uri=STORAGE_URI,
    )
    expected = {"default": 6000, "tools": 600, "call": 1200, "session_delete": 600, "auth_failure": 20}
    for group, amount in expected.items():
        assert [(item.amount, item.get_expiry()) for item in limiter.limits(group)] == [(amount, 60)]
        decision = now(limiter.hit(group, "principal:alice"))
        assert (decision.allowed, decision.limit, decision.remaining) == (True, amount, amount - 1)


def test_memory_runs_inline(limiters: Callable[..., RateLimiter], monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kw: Any) -> Deferred[Any]:
        raise AssertionError("memory storage must not use threads")

    monkeypatch.setattr(policy_storage, "deferToThread", refuse)
    limiter = limiters(call_limit="1 per hour")
    assert not limiter.shared
    assert [d.allowed for d in hits(limiter, "call", "principal:alice", 2)] == [True, False]


@pytest_twisted.ensureDeferred
async def test_window_ends(limiters: Callable[..., RateLimiter]) -> None:
    limiter = limiters(call_limit="2 per second")
    assert [d.allowed for d in hits(limiter, "call", "principal:alice", 3)] == [True, True, False]
    await sleep(1.05)
    assert now(limiter.hit("call", "principal:alice")).allowed


# -- a real redis-server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """
    One C{redis-server} for the module (tests use distinct keys).
    """
    with redis_server_at(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest_twisted.ensureDeferred
async def test_redis_enforced(
    limiters: Callable[..., RateLimiter], redis_server: RedisServer, threads: list[str]
) -> None:
    limiter = limiters(call_limit="3 per minute", storage_uri=redis_server.uri)
    assert limiter.shared
    who = key()
    decisions = [await limiter.hit("call", who) for _ in range(4)]
    assert [(d.allowed, d.limit, d.remaining) for d in decisions] == [
        (True, 3, 2),
        (True, 3, 1),
        (True, 3, 0),
        (False, 3, 0),
    ]
    assert 50 < decisions[3].retry_after <= 61
    assert 55 <= int(dict(decisions[3].headers())[b"Retry-After"]) <= 61
    assert len(threads) == 4
    # namespaced: prefix, group, key, limit
    names = {bytes(name).decode() for name in redis_server.client().keys(f"*{who}*")}
    assert names == {f"mcpgateway:LIMITER/call/{who}/3/1/minute"}


@pytest_twisted.ensureDeferred
async def test_redis_hits_run_in_threads(
    limiters: Callable[..., RateLimiter], redis_server: RedisServer, threads: list[str]
) -> None:
    limiter = limiters(call_limit="2 per minute", auth_failure_limit="1 per minute", storage_uri=redis_server.uri)
    storage = limiter._counters.primary.storage
    assert storage is not None
    seen: list[str] = []
    incr, get = storage.incr, storage.get

    def spy_incr(*args: Any, **kw: Any) -> int:
        seen.append(threading.current_thread().name)
        return incr(*args, **kw)

    def spy_get(*args: Any, **kw: Any) -> int:
        seen.append(threading.current_thread().name)
        return get(*args, **kw)

    storage.incr = spy_incr  # type: ignore[method-assign]
    storage.get = spy_get  # type: ignore[method-assign]
    pending = [limiter.hit("call", "principal:threads"), limiter.peek("auth_failure", "addr:192.0.2.9")]
    assert not any(d.called for d in pending)  # not answered on the reactor thread
    decisions = await gatherResults(pending)
    assert [d.allowed for d in decisions] == [True, True]
    assert threads == ["remote", "remote"]
    assert seen
    assert threading.main_thread().name not in seen
    assert threading.current_thread() is threading.main_thread()


def test_two_processes_share_one_budget(redis_server: RedisServer, tmp_path: Path) -> None:
    """
    Two processes with their own L{RateLimiter} on one Redis: 4 + 4 concurrent
    hits against "5 per minute" allow exactly 5.
    """
    script = tmp_path / "hitter.py"
    script.write_text(HITTER)
    go = tmp_path / "go"
    who = key()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), redis_server.uri, who, str(go), "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=str(ROOT),
        )
        for _ in range(2)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == b"ready", process.stderr
        go.touch()
        results = []
        for process in processes:
            out, err = process.communicate(timeout=30)
            assert process.returncode == 0, err.decode()
            results.append(json.loads(out))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    pids = {result["pid"] for result in results}
    assert len(pids) == 2
    allowed = [flag for result in results for flag in result["allowed"]]
    assert sorted(allowed) == [False] * 3 + [True] * 5
    assert all(result["threads"] and "MainThread" not in result["threads"] for result in results)
    assert int(redis_server.client().get(f"mcpgateway:LIMITER/call/{who}/5/1/minute") or 0) == 8


HITTER = """
import json, os, sys, threading
from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults
from mcpgateway.policy import ratelimit
from mcpgateway.policy import storage as policy_storage
from mcpgateway.config import RateLimitConfig
from mcpgateway.policy.ratelimit import RateLimiter

uri, who, go, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
names = set()
real = ratelimit._decide

def decide(*args, **kw):
    names.add(threading.current_thread().name)
    return real(*args, **kw)

ratelimit._decide = decide

async def main(reactor):
    limiter = RateLimiter(RateLimitConfig(call_limit="5 per minute", storage_uri=uri))
    print("ready", flush=True)
    while not os.path.exists(go):
        await task.deferLater(reactor, 0.002, lambda: None)
    decisions = await gatherResults([limiter.hit("call", who) for _ in range(count)])
    limiter.close()
    print(json.dumps({"pid": os.getpid(), "allowed": [d.allowed for d in decisions], "threads": sorted(names)}))

task.react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
"""


# -- a storage that fails ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_redis_down_fails_open_to_process_limits(
    limiters: Callable[..., RateLimiter], threads: list[str], warnings: list[str]
) -> None:
    port = free_port()  # nothing listens: connection refused
    limiter = limiters(call_limit="2 per hour", storage_uri=f"redis://:secret@127.0.0.1:{port}/0")
    started = time.monotonic()
    decisions = [await limiter.hit("call", "principal:alice") for _ in range(3)]
    assert time.monotonic() - started < 3
    # counted in this process: the limit still holds, per process
    assert [(d.allowed, d.limit) for d in decisions] == [(True, 2), (True, 2), (False, 2)]
    assert threads == ["remote"]  # then no thread until the retry interval has passed
    assert len(warnings) == 1
    assert f"127.0.0.1:{port}" in warnings[0]
    assert "counting in this process only" in warnings[0]
    assert "secret" not in warnings[0]


@pytest_twisted.ensureDeferred
async def test_redis_recovers(
    limiters: Callable[..., RateLimiter], tmp_path: Path, threads: list[str], warnings: list[str]
) -> None:
    with redis_server_at(tmp_path) as server:
        limiter = limiters(call_limit="100 per hour", storage_uri=server.uri, storage_retry_interval=0.2)
        assert (await limiter.hit("call", "principal:alice")).remaining == 99
        server.stop()
        assert (await limiter.hit("call", "principal:alice")).remaining == 99  # first hit in this process
        assert (await limiter.hit("call", "principal:alice")).remaining == 98
        assert len(threads) == 2
        assert len(warnings) == 1
        server.start()  # empty: it keeps nothing on disk
        await sleep(0.25)
        assert (await limiter.hit("call", "principal:alice")).remaining == 99  # counted in Redis again
        assert server.client().get("mcpgateway:LIMITER/call/principal:alice/100/1/hour") == b"1"
        assert len(threads) == 3
        assert len(warnings) == 1


@pytest.fixture
def black_hole() -> Iterator[int]:
    """
    A port that accepts connections (the kernel's backlog) and never answers.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest_twisted.ensureDeferred
async def test_hanging_redis_blocks_neither_reactor_nor_request(
    limiters: Callable[..., RateLimiter], black_hole: int, threads: list[str], warnings: list[str]
) -> None:
    limiter = limiters(call_limit="2 per hour", storage_uri=f"redis://127.0.0.1:{black_hole}/0")
    ticks: list[float] = []
    ticker = LoopingCall(lambda: ticks.append(time.monotonic()))
    ticker.clock = reactor
    ticker.start(0.02)
    try:
        started = time.monotonic()
        decision = await limiter.hit("call", "principal:alice")
        took = time.monotonic() - started
    finally:
        ticker.stop()
    assert decision.allowed
    assert decision.limit == 2
    assert 0.4 < took < ratelimit.HIT_TIMEOUT + 0.5  # the socket timeouts ended it
    assert len(ticks) > took / 0.02 / 2  # the reactor kept running meanwhile
    assert max(later - earlier for earlier, later in itertools.pairwise(ticks)) < 0.5
    assert len(warnings) == 1
    assert "TimeoutError" in warnings[0] or "Timeout" in warnings[0]
    # meanwhile: counted in this process at once, no thread
    assert (await limiter.hit("call", "principal:alice")).allowed
    assert not (await limiter.hit("call", "principal:alice")).allowed
    assert threads == ["remote"]


@pytest_twisted.ensureDeferred
async def test_hit_timeout_bounds_a_hit(
    limiters: Callable[..., RateLimiter], black_hole: int, threads: list[str], warnings: list[str]
) -> None:
    limiter = limiters(call_limit="2 per hour", storage_uri=f"redis://127.0.0.1:{black_hole}/0", hit_timeout=0.1)
    started = time.monotonic()
    decisions = await gatherResults([limiter.hit("call", "principal:alice") for _ in range(3)])
    assert time.monotonic() - started < 0.9  # well before the socket timeouts (1 s)
    assert sorted(d.allowed for d in decisions) == [False, True, True]
    assert len(threads) == 3
    assert len(warnings) == 1
    # let the threads give up on the socket; their late answers are ignored (no logged failure)
    await sleep(1.2)


def test_inline_memory_storage_expires_lazily_and_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from mcpgateway.policy.storage import InlineMemoryStorage

    threads = threading.active_count()
    now = [1000.0]
    monkeypatch.setattr("mcpgateway.policy.ratelimit.time.time", lambda: now[0])
    storage = InlineMemoryStorage()
    assert storage.incr("a", 10) == 1
    assert storage.incr("a", 10, amount=2) == 3
    assert storage.get("a") == 3
    assert storage.get_expiry("a") == 1010.0
    now[0] = 1010.0
    assert storage.get("a") == 0, "expired at the window's end"
    assert storage.incr("a", 10) == 1, "a new window"
    for number in range(2000):
        storage.incr(f"k{number}", 1)
    now[0] = 2000.0
    for number in range(100):
        storage.incr(f"fresh{number}", 1)
    assert len(storage._counts) < 200, "expired keys were swept once the dict doubled"
    assert storage.reset() is not None
    assert storage.get("fresh0") == 0
    assert threading.active_count() == threads, "no thread was started"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", 0.0),
        ("?socket_timeout=2", 0.5 + 4.0),
        ("?socket_timeout=2&socket_connect_timeout=3", 3.0 + 4.0),
        ("?socket_connect_timeout=1", 1.0 + 1.0),
        ("?socket_timeout=nope", 0.0),
        ("?socket_timeout=inf", 0.0),
    ],
)
def test_uri_socket_timeouts_lengthen_the_hit_timeout(query: str, expected: float) -> None:
    from mcpgateway.policy.storage import uri_hit_timeout as _uri_hit_timeout

    assert _uri_hit_timeout("redis://127.0.0.1:6379/0" + query) == pytest.approx(expected)
