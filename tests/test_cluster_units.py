"""
Units of L{mcpgateway.cluster}: the directory's scripts against a real
C{redis-server} (called synchronously), the placement's decisions, and the
worker supervisor on a L{Clock} with a recording reactor.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.test.requesthelper import DummyChannel

from mcpgateway.cluster.directory import Directory, DirectoryUnavailable, address_of
from mcpgateway.cluster.placement import Misdirected, Placement
from mcpgateway.cluster.workers import RESTART_DELAY, WorkerPool
from mcpgateway.config import ClusterConfig, parse_config
from mcpgateway.errors import Forbidden, GatewayError, ServiceUnavailable
from mcpgateway.gateway import Gateway
from mcpgateway.http.forward import Fleet
from mcpgateway.policy.auth import Principal

from .redis_fixture import RedisServer, redis_server_at

ME = "http://10.0.0.1:9100"
OTHER = "http://10.0.0.2:9100"
SECRET = "unit-secret-0123456789"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server_at(tmp_path) as server:
        yield server


def directory(server: RedisServer, address: str = ME, ttl: float = 30.0) -> Directory:
    config = ClusterConfig(redis=server.uri, secret="x" * 16, entry_ttl=ttl)
    return Directory(config, address, run=maybeDeferred)


def result(d: Deferred[Any]) -> Any:
    """
    @return: What an already fired C{d} holds (raising its failure).
    """
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def test_claim_is_first_come_and_release_only_by_the_owner(redis_server: RedisServer) -> None:
    mine, theirs = directory(redis_server), directory(redis_server, OTHER)
    assert mine.me.startswith(ME + "#") and mine.me != directory(redis_server).me  # each life its own
    assert result(mine.claim("s1")) == mine.me
    assert result(theirs.claim("s1")) == mine.me  # already owned: the owner is returned
    assert result(theirs.owner("s1")) == mine.me
    assert address_of(mine.me) == ME
    assert 0 < redis_server.client().pttl("mcpgateway:session:s1") <= 30000
    assert result(theirs.release("s1")) is False  # never another owner's
    assert result(mine.owner("s1")) == mine.me
    assert result(theirs.release("s1", mine.me)) is True  # naming the owner: a dead owner's entry
    assert result(mine.owner("s1")) is None


def test_refresh_keeps_own_rewrites_lost_and_counts(redis_server: RedisServer) -> None:
    mine, theirs = directory(redis_server, ttl=30), directory(redis_server, OTHER)
    result(mine.claim("a"))
    result(theirs.claim("b"))
    redis_server.client().pexpire("mcpgateway:session:a", 50)
    # "c" was lost (Redis restarted): written again; "b" is another's: left alone.
    assert result(mine.refresh(["a", "b", "c"])) == (3, 1)
    client = redis_server.client()
    assert client.pttl("mcpgateway:session:a") > 1000
    assert client.get("mcpgateway:session:b") == theirs.me.encode()
    assert client.get("mcpgateway:session:c") == mine.me.encode()
    result(theirs.refresh(["b"]))
    assert result(mine.refresh(["a", "c"])) == (3, 2)
    result(mine.leave())
    assert client.get(f"mcpgateway:instance:{ME}") is None


def test_redis_down_is_directory_unavailable(redis_server: RedisServer) -> None:
    mine = directory(redis_server)
    redis_server.stop()
    with pytest.raises(DirectoryUnavailable):
        result(mine.claim("s1"))


def placement(server: RedisServer, address: str = ME) -> tuple[Placement, Gateway]:
    config = parse_config({"server": {"auth_user": "u", "auth_password": "p"}}, {})
    clock = Clock()
    gateway = Gateway(config, None, clock)  # type: ignore[arg-type] # no service: nothing spawns
    return Placement(directory(server, address), gateway), gateway


def test_placement_serves_held_sessions_without_redis(redis_server: RedisServer) -> None:
    here, gateway = placement(redis_server)
    admin = Principal("admin", "admin")
    gateway.open_session("held", admin, 60, {})
    redis_server.stop()
    assert result(Deferred.fromCoroutine(here.owner_for("held", create=True))) is None
    with pytest.raises(ServiceUnavailable) as caught:
        result(Deferred.fromCoroutine(here.owner_for("other", create=True)))
    assert caught.value.code == "cluster_unavailable"


def test_placement_claims_forwards_caches_and_guards_loops(redis_server: RedisServer) -> None:
    here, _ = placement(redis_server)
    there, their_gateway = placement(redis_server, OTHER)
    assert result(Deferred.fromCoroutine(here.owner_for("s", create=True))) is None  # claimed here
    me = here.directory.me
    assert result(Deferred.fromCoroutine(there.owner_for("s", create=True))) == me  # forwarded there
    # Remembered: the directory is not asked again for it.
    redis_server.client().set("mcpgateway:session:s", "http://moved:1")
    assert result(Deferred.fromCoroutine(there.owner_for("s", create=True))) == me
    there.forget("s")
    assert result(Deferred.fromCoroutine(there.owner_for("s", create=True))) == "http://moved:1"
    # A forwarded request is never forwarded again: it names the owner instead.
    with pytest.raises(Misdirected) as caught:
        result(Deferred.fromCoroutine(here.owner_for("s", create=True, forwarded=True)))
    assert caught.value.owner == "http://moved:1"
    # Without create, an unknown session is not entered.
    assert result(Deferred.fromCoroutine(there.owner_for("nobody", create=False))) is None
    assert redis_server.client().get("mcpgateway:session:nobody") is None
    # A draining process claims no new session (it refuses it itself).
    their_gateway.sessions.refusing = True
    assert result(Deferred.fromCoroutine(there.owner_for("new", create=True))) is None
    assert redis_server.client().get("mcpgateway:session:new") is None
    assert result(Deferred.fromCoroutine(there.owner_for("s", create=True))) == "http://moved:1"
    their_gateway.sessions.refusing = False
    # A closed session leaves the directory.
    admin = Principal("admin", "admin")
    their_gateway.open_session("t", admin, 60, {})
    result(Deferred.fromCoroutine(there.claim("t")))
    their_gateway.close_session("t", admin)
    assert redis_server.client().get("mcpgateway:session:t") is None


def test_a_draining_process_passes_a_new_session_on(redis_server: RedisServer) -> None:
    """
    A draining process leaves the list of processes that take new sessions
    and passes a new session on to one of them (nothing claimed yet: that
    one claims it when the call arrives); with none, it serves (refuses) it itself.
    """
    config = parse_config({"server": {"auth_user": "u", "auth_password": "p"}}, {})
    gateway = Gateway(config, None, Clock())  # type: ignore[arg-type]
    here = Placement(directory(redis_server), gateway, choose=lambda addresses: addresses[-1])
    there, _ = placement(redis_server, OTHER)
    third, _ = placement(redis_server, "http://10.0.0.3:9100")
    for process in (here, there, third):
        result(process.directory.refresh([]))
    client = redis_server.client()
    assert client.exists(f"mcpgateway:instance:{ME}")
    gateway.sessions.refusing = True
    assert result(Deferred.fromCoroutine(here.owner_for("new", create=True))) == "http://10.0.0.3:9100"
    assert here.passed_on("new") and client.get("mcpgateway:session:new") is None
    assert not client.exists(f"mcpgateway:instance:{ME}")  # left the list
    result(here.directory.refresh([], listed=False))
    assert not client.exists(f"mcpgateway:instance:{ME}")  # and stays out of it
    here.reached("new")
    assert not here.passed_on("new")
    # A forwarded request is never passed on again; a known session is not passed on.
    assert result(Deferred.fromCoroutine(here.owner_for("other", create=True, forwarded=True))) is None
    result(there.directory.claim("known"))
    assert result(Deferred.fromCoroutine(here.owner_for("known", create=True))) == there.directory.me
    assert not here.passed_on("known")
    # With nobody else listed, the draining process refuses the session itself.
    for process in (there, third):
        result(process.directory.leave())
    assert result(Deferred.fromCoroutine(here.owner_for("alone", create=True))) is None


def test_an_earlier_process_at_this_address_took_its_sessions_with_it(redis_server: RedisServer) -> None:
    """
    A process that starts again at its predecessor's address (a restarted
    worker keeps its internal port) finds that one's entries: their
    children died with it, so they are C{session_lost} (and removed), not
    served here as new, empty sessions the caller would take for its own.
    """
    before, _ = placement(redis_server)
    assert result(Deferred.fromCoroutine(before.owner_for("s", create=True))) is None
    assert result(Deferred.fromCoroutine(before.owner_for("t", create=True))) is None
    after, _ = placement(redis_server)  # the same address, another life
    entry = redis_server.client()
    for forwarded in (False, True):  # also when another gateway forwarded it here
        session = "st"[forwarded]
        with pytest.raises(ServiceUnavailable) as caught:
            result(Deferred.fromCoroutine(after.owner_for(session, create=True, forwarded=forwarded)))
        assert caught.value.code == "session_lost"
        assert entry.get(f"mcpgateway:session:{session}") is None
    # The retry starts the session afresh, here.
    assert result(Deferred.fromCoroutine(after.owner_for("s", create=True))) is None
    assert entry.get("mcpgateway:session:s") == after.directory.me.encode()


class Paused:
    """
    Runs a directory's Redis commands at once, or, while paused, when told to
    (an answer on its way back from the thread pool).
    """

    def __init__(self) -> None:
        self.paused = False
        self.waiting: list[tuple[Any, Deferred[Any]]] = []

    def __call__(self, work: Any) -> Deferred[Any]:
        if not self.paused:
            return maybeDeferred(work)
        d: Deferred[Any] = Deferred()
        self.waiting.append((work, d))
        return d

    def resume(self, order: list[int] | None = None) -> None:
        """
        Run what waits, in the order it was sent or in C{order} (the thread
        pool's threads may run it in any order).
        """
        self.paused = False
        waiting, self.waiting = self.waiting, []
        for index in order or range(len(waiting)):
            work, d = waiting[index]
            d.callback(work())


def paused_placement(server: RedisServer) -> tuple[Placement, Gateway, Paused]:
    config = parse_config({"server": {"auth_user": "u", "auth_password": "p"}}, {})
    gateway = Gateway(config, None, Clock())  # type: ignore[arg-type] # no service: nothing spawns
    run = Paused()
    cluster = ClusterConfig(redis=server.uri, secret="x" * 16, entry_ttl=30.0)
    return Placement(Directory(cluster, ME, run=run), gateway), gateway, run


def test_a_session_opened_while_a_refused_call_releases_its_claim_keeps_its_entry(
    redis_server: RedisServer,
) -> None:
    """
    Two first calls of one session on one process: one is refused (a tool
    policy, a rate limit) and releases the claim, while the other, whose
    claim came back first, opens the session.  The session lives here, so
    its entry must stay: without it the next call through another gateway
    would open a second, empty session there.
    """
    here, gateway, run = paused_placement(redis_server)
    entry = redis_server.client()
    assert result(Deferred.fromCoroutine(here.owner_for("s", create=True))) is None  # both calls' claims
    run.paused = True  # the refused call's release is on its way...
    abandoning = Deferred.fromCoroutine(here.abandon("s"))
    gateway.open_session("s", Principal("u", "agent"), 60, {})  # ...when the other call opens the session
    run.resume()
    result(abandoning)
    assert entry.get("mcpgateway:session:s") == here.directory.me.encode()


def test_a_refused_first_call_leaves_the_claim_of_another_under_way(redis_server: RedisServer) -> None:
    """
    As above, the other call not yet past its claim or the policies when the
    refused one ends: the claim stays; it goes once the last call of the
    session ends without opening it.
    """
    here, _, run = paused_placement(redis_server)
    entry = redis_server.client()
    with here.calling("s"):  # a call under way, its session not open yet
        with here.calling("s"):  # the refused one
            assert result(Deferred.fromCoroutine(here.owner_for("s", create=True))) is None
            result(Deferred.fromCoroutine(here.abandon("s")))
        assert entry.get("mcpgateway:session:s") == here.directory.me.encode()
        # A call arriving while a release is on its way: the session is entered again.
        with here.calling("t"):
            assert result(Deferred.fromCoroutine(here.owner_for("t", create=True))) is None
            run.paused = True
            abandoning = Deferred.fromCoroutine(here.abandon("t"))
            with here.calling("t"):
                run.resume()
                result(abandoning)
                assert entry.get("mcpgateway:session:t") == here.directory.me.encode()
        # The call under way fails too: now the claim goes.
        result(Deferred.fromCoroutine(here.abandon("s")))
    assert entry.get("mcpgateway:session:s") is None


def test_a_session_closed_while_a_refresh_is_on_its_way_leaves_no_entry(redis_server: RedisServer) -> None:
    """
    A reaper sweep's refresh names a session that closes before the refresh
    runs; in the thread pool the close's release may run first, and the
    refresh (which writes a missing entry again) would bring the entry back
    for C{entry_ttl}: a closed session that looks alive (and C{session_lost}
    if this process dies).  Such sessions are released again after the refresh.
    """
    here, gateway, run = paused_placement(redis_server)
    entry = redis_server.client()
    alice = Principal("u", "agent")
    for session_id in ("closed", "reopened"):
        assert result(Deferred.fromCoroutine(here.owner_for(session_id, create=True))) is None
        gateway.open_session(session_id, alice, 60, {})
    run.paused = True
    here.refresh()
    for session_id in ("closed", "reopened"):
        gateway.close_session(session_id, alice)
    gateway.open_session("reopened", alice, 60, {})  # a new call of it, here, meanwhile
    run.resume(order=[1, 2, 0])  # both releases first, then the refresh
    assert entry.get("mcpgateway:session:closed") is None
    assert entry.get("mcpgateway:session:reopened") == here.directory.me.encode()
    assert here.fleet_sessions == 2  # counted by the refresh, before the second release


# -- the supervisor -----------------------------------------------------------------


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class RecordingReactor:
    def __init__(self) -> None:
        self.spawned: list[tuple[Any, list[str], FakeProcess]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: dict[str, str], **kw: Any) -> Any:
        process = FakeProcess(1000 + len(self.spawned))
        self.spawned.append((protocol, args, process))
        protocol.makeConnection(process)
        return process


def test_supervisor_restarts_with_growing_delay_and_stops_all() -> None:
    clock, reactor = Clock(), RecordingReactor()
    pool = WorkerPool(2, lambda i: ["worker", str(i)], reactor, clock, env={}, stop_grace=5)  # type: ignore[arg-type]
    pool.startService()
    assert [args for _, args, _ in reactor.spawned] == [["worker", "0"], ["worker", "1"]]
    assert pool.workers == {0: 1000, 1: 1001}
    dying = reactor.spawned[0][0]
    dying.processEnded(Failure(ProcessTerminated(signal=9)))
    assert 0 not in pool.workers
    clock.advance(RESTART_DELAY - 0.01)
    assert len(reactor.spawned) == 2
    clock.advance(0.01)
    assert reactor.spawned[2][1] == ["worker", "0"]
    # Dying young again: the delay doubles.
    reactor.spawned[2][0].processEnded(Failure(ProcessTerminated(exitCode=1)))
    clock.advance(RESTART_DELAY * 2 - 0.01)
    assert len(reactor.spawned) == 3
    clock.advance(0.01)
    assert len(reactor.spawned) == 4
    # Stop: SIGTERM to each, SIGKILL to one that ignores it, done when all ended.
    stopped = pool.stopService()
    live = [reactor.spawned[1], reactor.spawned[3]]
    assert [process.signals for _, _, process in live] == [["TERM"], ["TERM"]]
    live[0][0].processEnded(Failure(ProcessDone(0)))
    clock.advance(5)
    assert live[1][2].signals == ["TERM", "KILL"]
    assert not stopped.called
    live[1][0].processEnded(Failure(ProcessTerminated(signal=9)))
    assert stopped.called
    clock.advance(60)
    assert len(reactor.spawned) == 4  # nothing restarted after the stop


# -- forwarding, over real sockets ------------------------------------------------------


class Owner(Resource):
    """
    A stand-in owner: answers C{/health}; a POST is answered as C{behaviour} says.
    """

    isLeaf = True

    def __init__(self, behaviour: str, moved_to: str = "", health: int = 200) -> None:
        super().__init__()
        self.behaviour = behaviour
        self.moved_to = moved_to
        self.health = health
        self.seen: list[tuple[bytes | None, bytes | None, bytes]] = []

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(self.health)
        return b"{}"

    def render_POST(self, request: Any) -> Any:
        forwarded = request.getHeader(b"x-mcpgateway-forwarded")
        self.seen.append((forwarded, request.getHeader(b"x-mcpgateway-principal"), request.content.read()))
        if self.behaviour == "drop":
            request.transport.abortConnection()
            return NOT_DONE_YET
        if self.behaviour == "moved":
            request.setResponseCode(421)
            request.setHeader(b"X-Mcpgateway-Owner", self.moved_to.encode())
            return b'{"code":"misdirected"}'
        request.setResponseCode(429)
        request.setHeader(b"Retry-After", b"7")
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"X-Internal", b"not passed on")
        return b'{"answer":"from the owner"}'


class Front(Resource):
    """
    The forwarding side: every POST is answered by C{route} (by default, a
    L{Fleet} routes it for session C{s}), or with C{here} if it answers L{None}.
    """

    isLeaf = True

    def __init__(
        self,
        fleet: Fleet,
        route: Callable[[Fleet, Any, Principal], Coroutine[Any, Any, bytes | None]] | None = None,
        here: bytes = b"served here",
    ) -> None:
        super().__init__()
        self.fleet = fleet
        self.route = route or (lambda fleet, request, alice: fleet.route(request, "s", create=True, principal=alice))
        self.here = here

    def render_POST(self, request: Any) -> Any:
        def done(body: bytes | None) -> None:
            request.write(self.here if body is None else body)
            request.finish()

        def failed(failure: Failure) -> None:
            error = failure.value
            assert isinstance(error, GatewayError), failure.getTraceback()
            request.setResponseCode(error.status)
            request.write(json.dumps(error.body()).encode())
            request.finish()

        alice = Principal("alice", "agent", ("ops",))
        Deferred.fromCoroutine(self.route(self.fleet, request, alice)).addCallbacks(done, failed)
        return NOT_DONE_YET


@pytest.fixture
def servers() -> Iterator[list[Any]]:
    ports: list[Any] = []
    yield ports
    for port in ports:
        port.stopListening()


def listen(resource: Resource, servers: list[Any]) -> str:
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    servers.append(port)
    return f"http://127.0.0.1:{port.getHost().port}"


def fleet_of(redis_server: RedisServer, choose: Callable[[list[str]], str] = random.choice) -> Fleet:
    """
    @return: The forwarding side of a gateway with no service (nothing spawns).
    """
    config = ClusterConfig(redis=redis_server.uri, secret=SECRET, entry_ttl=30, connect_timeout=1)
    gateway = Gateway(parse_config({"server": {"auth_user": "u", "auth_password": "p"}}, {}), None, reactor)  # type: ignore[arg-type]
    return Fleet(Placement(Directory(config, "http://127.0.0.1:1"), gateway, choose=choose), SECRET, reactor, 1.0)


async def post(url: str, body: bytes = b'{"tool":"t"}', **headers: str) -> tuple[int, bytes]:
    """
    @return: The status and body of a POST of C{body} to C{url}.
    """
    response = await treq.post(url, data=body, headers={"Authorization": "Basic eDp5", **headers})
    return response.code, await treq.content(response)


@pytest_twisted.ensureDeferred
async def test_forwarding_answers_unchanged_and_tells_lost_from_dropped(
    redis_server: RedisServer, servers: list[Any]
) -> None:
    config = ClusterConfig(redis=redis_server.uri, secret=SECRET, entry_ttl=30, connect_timeout=1)
    gateway = Gateway(parse_config({"server": {"auth_user": "u", "auth_password": "p"}}, {}), None, reactor)  # type: ignore[arg-type]
    fleet = Fleet(Placement(Directory(config, "http://127.0.0.1:1"), gateway), SECRET, reactor, 1.0)
    front = listen(Front(fleet), servers)
    entry = redis_server.client()

    async def post() -> tuple[int, Any, bytes]:
        response = await treq.post(front, data=b'{"tool":"t"}', headers={"Authorization": "Basic eDp5"})
        return response.code, response.headers, await treq.content(response)

    try:
        # The owner's answer comes back as it was: status, body, the headers that matter.
        answering = Owner("answer")
        entry.set("mcpgateway:session:s", listen(answering, servers))
        code, headers, body = await post()
        assert (code, body) == (429, b'{"answer":"from the owner"}')
        assert headers.getRawHeaders(b"retry-after") == [b"7"]
        assert headers.getRawHeaders(b"x-internal") is None
        admitted = b'{"name": "alice", "role": "agent", "roles": ["ops"]}'
        assert answering.seen == [(SECRET.encode(), admitted, b'{"tool":"t"}')]

        # A stale owner (remembered) answers 421: the directory is asked again, once.
        fleet.placement.forget("s")
        stale = listen(Owner("moved", "http://elsewhere:1"), servers)
        entry.set("mcpgateway:session:s", stale)
        assert await fleet.placement.owner_for("s", create=True) == stale
        real = Owner("answer")
        entry.set("mcpgateway:session:s", listen(real, servers))
        code, _, body = await post()
        assert (code, body) == (429, b'{"answer":"from the owner"}')
        assert len(real.seen) == 1

        # An owner that drops the call but answers /health keeps its session.
        fleet.placement.forget("s")
        dropping = listen(Owner("drop"), servers)
        entry.set("mcpgateway:session:s", dropping)
        code, _, body = await post()
        assert code == 503
        assert json.loads(body)["code"] == "service_unavailable"
        assert entry.get("mcpgateway:session:s") == dropping.encode()

        # So does a draining owner (its /health is 503 so that balancers send new sessions elsewhere).
        fleet.placement.forget("s")
        draining = listen(Owner("drop", health=503), servers)
        entry.set("mcpgateway:session:s", draining)
        code, _, body = await post()
        assert (code, json.loads(body)["code"]) == (503, "service_unavailable")
        assert entry.get("mcpgateway:session:s") == draining.encode()

        # An owner that cannot be reached: session_lost, its entry removed.
        fleet.placement.forget("s")
        gone = servers.pop()
        await gone.stopListening()
        code, _, body = await post()
        assert code == 503
        assert json.loads(body)["code"] == "session_lost"
        assert entry.get("mcpgateway:session:s") is None
        assert fleet.placement.forwards == {"answered": 2, "lost": 1, "misdirected": 0}
    finally:
        await fleet.close()


@pytest_twisted.ensureDeferred
async def test_an_owner_s_refusal_sends_the_next_call_to_the_directory(
    redis_server: RedisServer, servers: list[Any]
) -> None:
    """
    A first call forwarded to the process that claimed the session in a
    call of its own, and refused there (full: 429; draining: 503): that
    process released its claim with the refusal (L{Placement.abandon}), so
    the next call is not sent back to be refused again (and answered
    C{session_lost} once that process is gone) but opens the session here.
    """
    fleet = fleet_of(redis_server)
    front = listen(Front(fleet), servers)
    entry = redis_server.client()
    try:
        full = Owner("answer")  # 429
        entry.set("mcpgateway:session:s", listen(full, servers))
        assert (await post(front))[0] == 429
        entry.delete("mcpgateway:session:s")  # its claim went with the refusal
        assert await post(front) == (200, b"served here")
        assert entry.get("mcpgateway:session:s") == fleet.placement.directory.me.encode()
        assert len(full.seen) == 1
    finally:
        await fleet.close()


@pytest_twisted.ensureDeferred
async def test_a_draining_process_passes_a_session_it_cannot_name_on(
    redis_server: RedisServer, servers: list[Any]
) -> None:
    """
    An MCP C{initialize} reaching a draining process goes whole to a
    process that takes new sessions (which mints and claims the id); a
    forwarded one is never passed on again; with nobody to take it, or
    Redis gone, it is refused here.  A process that is gone (its port
    refuses connections) is taken off the list and another one chosen; one
    that drops the request is 503 C{draining}, a retry.
    """
    preferred: list[str] = []
    fleet = fleet_of(redis_server, lambda found: next((a for a in found if a in preferred), found[0]))
    me = fleet.placement.address
    # An MCP initialize names no session: Fleet.pass_on answers it or refuses.
    mcp = listen(Front(fleet, lambda fleet, request, alice: fleet.pass_on(request, alice), b"refused here"), servers)
    mcp += "/mcp/svc"
    entry = redis_server.client()
    initialize = b'{"method":"initialize"}'

    try:
        entry.set(f"mcpgateway:instance:{me}", "1")  # leaves the list at its first pass
        assert await post(mcp, initialize) == (200, b"refused here")
        assert entry.get(f"mcpgateway:instance:{me}") is None

        taking = Owner("answer")
        address = listen(taking, servers)
        entry.set(f"mcpgateway:instance:{address}", "1")
        assert await post(mcp, initialize) == (429, b'{"answer":"from the owner"}')
        admitted = b'{"name": "alice", "role": "agent", "roles": ["ops"]}'
        assert taking.seen == [(SECRET.encode(), admitted, b'{"method":"initialize"}')]
        assert entry.keys("mcpgateway:session:*") == []  # the process that serves it claims its id

        assert await post(mcp, initialize, **{"X-Mcpgateway-Forwarded": SECRET}) == (200, b"refused here")
        assert len(taking.seen) == 1

        gone = servers.pop()
        await gone.stopListening()
        await fleet.pool.closeCachedConnections()  # the process went with its connections
        other = Owner("answer")
        entry.set(f"mcpgateway:instance:{listen(other, servers)}", "1")
        preferred.append(address)  # the gone one is chosen first
        assert await post(mcp, initialize) == (429, b'{"answer":"from the owner"}')
        assert entry.get(f"mcpgateway:instance:{address}") is None
        assert len(other.seen) == 1
        entry.delete(*entry.keys("mcpgateway:instance:*"))
        entry.set(f"mcpgateway:instance:{address}", "1")  # only a gone one is listed
        assert await post(mcp, initialize) == (200, b"refused here")
        assert entry.keys("mcpgateway:instance:*") == []

        entry.set(f"mcpgateway:instance:{listen(Owner('drop'), servers)}", "1")
        code, body = await post(mcp, initialize)
        assert code == 503, body
        assert json.loads(body)["code"] == "draining", body
        assert fleet.placement.forwards == {"answered": 2, "lost": 0, "misdirected": 0}

        redis_server.stop()
        assert await post(mcp, initialize) == (200, b"refused here")
    finally:
        await fleet.close()


@pytest_twisted.ensureDeferred
async def test_a_new_rest_session_passed_on_to_a_gone_process_goes_to_another(
    redis_server: RedisServer, servers: list[Any]
) -> None:
    """
    A draining process passes a new REST session on; if the process it
    chose is gone (its port refuses connections; its instance key has not
    expired yet), that one is taken off the list and another chosen: the
    call never reached a process.  With none left, it is served here (where
    the drain refuses it: 503 C{draining}).
    """
    dead = listen(Owner("answer"), servers)
    await servers.pop().stopListening()
    fleet = fleet_of(redis_server, lambda found: dead if dead in found else found[0])
    fleet.placement.gateway.sessions.refusing = True  # draining
    front = listen(Front(fleet), servers)
    entry = redis_server.client()

    try:
        taking = Owner("answer")
        for address in (dead, listen(taking, servers)):
            entry.set(f"mcpgateway:instance:{address}", "1")
        assert await post(front) == (429, b'{"answer":"from the owner"}')
        assert len(taking.seen) == 1
        assert entry.get(f"mcpgateway:instance:{dead}") is None

        entry.delete(*entry.keys("mcpgateway:instance:*"))
        entry.set(f"mcpgateway:instance:{dead}", "1")
        fleet.placement.forget("s")
        assert await post(front) == (200, b"served here")
        assert entry.keys("mcpgateway:instance:*") == []
    finally:
        await fleet.close()


def test_the_owner_takes_the_principal_only_with_the_secret(redis_server: RedisServer) -> None:
    config = ClusterConfig(redis=redis_server.uri, secret=SECRET)
    gateway = Gateway(parse_config({"server": {"auth_user": "u", "auth_password": "p"}}, {}), None, Clock())  # type: ignore[arg-type]
    fleet = Fleet(Placement(Directory(config, ME), gateway), SECRET, Clock(), 1.0)

    def request(**headers: bytes) -> Any:
        made = Request(DummyChannel())
        for name, value in headers.items():
            made.requestHeaders.setRawHeaders(name.replace("_", "-").encode(), [value])
        return made

    admitted = b'{"name": "alice", "role": "agent", "roles": ["ops"]}'
    forwarded = request(x_mcpgateway_forwarded=SECRET.encode(), x_mcpgateway_principal=admitted)
    assert fleet.principal_of(forwarded) == Principal("alice", "agent", ("ops",))
    assert fleet.principal_of(request(x_mcpgateway_principal=admitted)) is None  # no secret: not trusted
    with pytest.raises(Forbidden):
        fleet.principal_of(request(x_mcpgateway_forwarded=b"wrong", x_mcpgateway_principal=admitted))
    for bad in (b"[]", b"{}", b'{"name": "a", "role": "root"}', b'{"name": 1, "role": "agent"}', b"\xff"):
        assert fleet.principal_of(request(x_mcpgateway_forwarded=SECRET.encode(), x_mcpgateway_principal=bad)) is None
