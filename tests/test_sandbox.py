"""
L{mcpgateway.children.sandbox.launch}: the policy read from the configuration, and what a
real child started with a L{Launch} sees and may do (limits, environment,
process group, parent-death signal, cgroup, user), including a fork bomb, a
memory hog, a disk filler and a SIGKILLed parent.

The children are spawned with C{subprocess} (and once with Twisted's
C{spawnProcess}, as the gateway does) and run C{tests/servers/probe_server.py},
copied to a directory every uid can read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import pwd
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import globalLogPublisher

from mcpgateway.children import sandbox
from mcpgateway.children.sandbox import Launch, SandboxError, build_launch
from mcpgateway.children.sandbox import launch as sandbox_launch
from mcpgateway.children.sandbox import machine as sandbox_machine
from mcpgateway.config import ConfigError, ResourceLimits, SandboxPolicy, policy_from_config
from mcpgateway.mcp.stdio import ChildProtocol

from .conftest import PASSWORD, SERVERS, require_binary

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is for Linux")

MIB = 1024 * 1024
DEFAULT = SandboxPolicy()
#: A task limit of 10, to see the limit's mechanics with few processes.
TEN_TASKS = SandboxPolicy(limits=ResourceLimits(tasks=10))
MEDIUM = SandboxPolicy(level="medium")
NONE = SandboxPolicy(level="none", limits=None)
TOKEN = "tok-3f9a1c"


# -- fixtures --------------------------------------------------------------------------


@dataclasses.dataclass
class Place:
    """
    Directories every uid can search: the probe's copy and a sandbox root.
    """

    root: Path
    probe: str
    sandbox: Path

    def workdir(self) -> str:
        """
        @return: A new private directory (0700, like the gateway's C{mkdtemp}).
        """
        return tempfile.mkdtemp(prefix="probe-", dir=self.sandbox)


@pytest.fixture
def place() -> Iterator[Place]:
    root = Path(tempfile.mkdtemp(prefix="mcpgw-sandbox-", dir="/tmp" if os.path.isdir("/tmp") else None))
    root.chmod(0o755)
    for name in ("probe_server.py", "_mcp.py"):
        shutil.copy(SERVERS / name, root / name)
        (root / name).chmod(0o644)
    sandbox_root = root / "sandbox"
    sandbox_root.mkdir(mode=0o711)
    sandbox_root.chmod(0o711)
    yield Place(root, str(root / "probe_server.py"), sandbox_root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def launches() -> Iterator[list[Launch]]:
    """
    Launches made by a test: their process groups are killed and their cgroups removed afterwards.
    """
    made: list[Launch] = []
    yield made
    for launch in made:
        if launch.cgroup:
            for pid in _cgroup_members(launch.cgroup):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            _wait_for(lambda launch=launch: launch.cleanup(), 5)


@pytest.fixture
def build(place: Place, launches: list[Launch]) -> Callable[..., Launch]:
    def make(
        policy: SandboxPolicy,
        command: tuple[str, ...],
        *,
        env: dict[str, str] | None = None,
        gateway_env: dict[str, str] | None = None,
        workdir: str | None = None,
    ) -> Launch:
        launch = build_launch(
            policy,
            command,
            service="probe",
            workdir=workdir or place.workdir(),
            extra_env=env or {},
            gateway_env=os.environ if gateway_env is None else gateway_env,
            secrets=(PASSWORD, TOKEN, ""),
        )
        launches.append(launch)
        return launch

    return make


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _cgroup_members(directory: str) -> list[int]:
    try:
        return [int(pid) for pid in Path(directory, "cgroup.procs").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """
    @return: Whether C{pid} runs (a zombie does not).
    """
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)


def run(launch: Launch, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """
    Spawn C{launch} as the gateway will and wait for it.
    """
    return subprocess.run(
        launch.args,
        executable=launch.executable,
        env=launch.env,
        cwd=launch.path,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_json(launch: Launch) -> dict[str, Any]:
    """
    @return: The probe's one line of JSON.
    """
    done = run(launch)
    assert done.returncode == 0, (done.returncode, done.stderr)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def read_line(process: subprocess.Popen[bytes], timeout: float = 30) -> dict[str, Any]:
    """
    @return: The next JSON line on C{process}'s stdout, without hanging the test.
    """
    assert process.stdout is not None
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        assert left > 0, f"no line within {timeout} s: {data!r}"
        ready, _, _ = select.select([process.stdout], [], [], left)
        if ready:
            chunk = os.read(process.stdout.fileno(), 65536)
            assert chunk, f"the child ended: {data!r}"
            data += chunk
    result: dict[str, Any] = json.loads(data)
    return result


def probe(place: Place, *args: str, python: str = sys.executable) -> tuple[str, ...]:
    return (python, "-I", "-S", place.probe, *args)


def machine_without(**changes: Any) -> Callable[[], Any]:
    """
    @return: A stand-in for L{sandbox_machine.probe} with some probes changed.
    """
    changed = dataclasses.replace(sandbox_machine.probe(), **changes)
    return lambda: changed


def need_cgroup() -> str:
    capabilities = sandbox.sandbox_capabilities()
    if not capabilities["cgroup"]:
        pytest.skip(f"no cgroup with pids.max can be made here: {capabilities['cgroup_unavailable']}")
    return str(capabilities["cgroup_dir"])


def need_root() -> None:
    if not sandbox.sandbox_capabilities()["privilege_drop"]:
        pytest.skip("the gateway must be root (CAP_SETUID, CAP_SETGID) to run a child as another user")


def _uid_in_use(uid: int) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    return True
            except OSError:
                continue
    return False


@pytest.fixture
def user() -> tuple[int, int]:
    """
    @return: A uid and gid nobody uses (no passwd entry, no process), so
        that C{RLIMIT_NPROC} counts only the test's child; unique per test
        process, so parallel test runs do not share it.
    """
    need_root()
    uid = 61000 + os.getpid() % 3000
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            if not _uid_in_use(uid):
                return uid, uid
        uid += 1


def user_policy(ids: tuple[int, int], **changes: Any) -> SandboxPolicy:
    return SandboxPolicy(user=str(ids[0]), uid=ids[0], gid=ids[1], **changes)


_pythons: dict[tuple[int, int], str] = {}


def python_for(ids: tuple[int, int]) -> str:
    """
    @return: An interpreter the uid can run (the test's own may sit in a directory closed to it).
    """
    if ids not in _pythons:
        candidates = [sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3"]
        for candidate in candidates:
            check = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import os,sys; os.setgroups([]); os.setgid(int(sys.argv[2])); os.setuid(int(sys.argv[1]));"
                    " os.execv(sys.argv[3], [sys.argv[3], '-I', '-S', '-c', 'import ctypes, json, resource'])",
                    str(ids[0]),
                    str(ids[1]),
                    candidate,
                ],
                capture_output=True,
                check=False,
            )
            if check.returncode == 0:
                _pythons[ids] = candidate
                break
        else:
            pytest.skip(f"no Python interpreter is usable by uid {ids[0]}: tried {candidates}")
    return _pythons[ids]


# -- the policy --------------------------------------------------------------------------


def test_policy_defaults_are_high_with_limits() -> None:
    policy = policy_from_config({}, "services.x.sandbox")
    assert policy == SandboxPolicy()
    assert policy.level == "high"
    assert policy.limits == ResourceLimits(cpu_seconds=300, memory_mb=512, processes=10, file_size_mb=256)
    assert policy.uid is None and policy.env_passthrough == ()


@pytest.mark.parametrize(
    ("raw", "level", "limited"),
    [
        ({"enabled": True, "resource_limits": True, "restricted_env": True}, "high", True),
        ({"restricted_env": False}, "medium", True),
        ({"enabled": False}, "none", False),
        ({"enabled": False, "resource_limits": True}, "none", False),
        ({"resource_limits": False}, "high", False),
        ({"restricted_env": "${RESTRICT|no}", "resource_limits": "false"}, "medium", False),
        ({"level": "medium"}, "medium", True),
        ({"level": "none", "restricted_env": True}, "none", False),
        ({"enabled": False, "level": "HIGH"}, "high", True),
    ],
)
def test_policy_level_from_the_seed_keys(raw: dict[str, Any], level: str, limited: bool) -> None:
    policy = policy_from_config(raw, "services.x.sandbox", environ={})
    assert policy.level == level
    assert (policy.limits is not None) is limited


def test_policy_limits_object() -> None:
    policy = policy_from_config(
        {"resource_limits": {"memory_mb": "${MEM|1024}", "processes": 50, "cpu_seconds": None, "open_files": 256}},
        "s",
        environ={},
    )
    assert policy.limits == ResourceLimits(
        cpu_seconds=None, memory_mb=1024, processes=50, file_size_mb=256, open_files=256
    )


def test_policy_passthrough_user_group_and_working_dir() -> None:
    policy = policy_from_config(
        {"env_passthrough": ["HTTPS_PROXY", "PYTHONPATH"], "user": "nobody", "working_dir": "${D|/srv}"},
        "s",
        environ={},
    )
    entry = pwd.getpwnam("nobody")
    assert policy.env_passthrough == ("HTTPS_PROXY", "PYTHONPATH")
    assert (policy.user, policy.uid, policy.gid) == ("nobody", entry.pw_uid, entry.pw_gid)
    assert policy.working_dir == "/srv"
    numeric = policy_from_config({"user": "61999", "group": "62000"}, "s")
    assert (numeric.uid, numeric.gid) == (61999, 62000)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "services.x.sandbox: expected an object, got a list"),
        ({"sandboxed": True}, "services.x.sandbox.sandboxed: unknown key (known keys: enabled, env_passthrough"),
        ({"level": "paranoid"}, "services.x.sandbox.level: expected high, medium or none, got 'paranoid'"),
        ({"enabled": "maybe"}, "services.x.sandbox.enabled: expected true or false, got 'maybe'"),
        ({"resource_limits": 5}, "services.x.sandbox.resource_limits: expected true or false, got 5"),
        ({"resource_limits": {"memory_mb": 0}}, "services.x.sandbox.resource_limits.memory_mb: must be greater"),
        ({"resource_limits": {"memory_mb": "lots"}}, "services.x.sandbox.resource_limits.memory_mb: expected a"),
        ({"resource_limits": {"memory_mb": True}}, "services.x.sandbox.resource_limits.memory_mb: expected a"),
        ({"resource_limits": {"swap_mb": 1}}, "services.x.sandbox.resource_limits.swap_mb: unknown key"),
        ({"env_passthrough": {"A": 1}}, "services.x.sandbox.env_passthrough: expected a list of variable names"),
        ({"env_passthrough": ["A", "B=C"]}, "services.x.sandbox.env_passthrough[1]: not an environment variable"),
        ({"env_passthrough": ["LD_PRELOAD"]}, "services.x.sandbox.env_passthrough[0]: LD_PRELOAD is never passed"),
        ({"env_passthrough": ["MCP_AUTH_TOKEN"]}, "services.x.sandbox.env_passthrough[0]: MCP_AUTH_TOKEN is never"),
        ({"user": "no-such-user-mcpgw"}, "services.x.sandbox.user: no such user: 'no-such-user-mcpgw'"),
        ({"user": "61999"}, "services.x.sandbox.user: uid 61999 has no passwd entry: give group too"),
        ({"user": "nobody", "group": "no-such-group-mcpgw"}, "services.x.sandbox.group: no such group"),
        ({"group": "nogroup"}, "services.x.sandbox.group: needs user"),
        ({"working_dir": 7}, "services.x.sandbox.working_dir: expected a string, got an integer"),
    ],
)
def test_policy_errors_name_the_key_path(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        policy_from_config(raw, "services.x.sandbox")
    assert str(caught.value).startswith(message), str(caught.value)


# -- what the machine offers ----------------------------------------------------------------


def test_capabilities_describe_this_machine() -> None:
    capabilities = sandbox.sandbox_capabilities()
    assert set(capabilities) == {
        "exec_chain",
        "process_group",
        "pdeathsig",
        "resource_limits",
        "no_new_privs",
        "cgroup",
        "cgroup_dir",
        "cgroup_unavailable",
        "root",
        "privilege_drop",
        "capability_drop",
        "process_limit",
    }
    assert capabilities["exec_chain"] in ("util-linux", "python")
    assert capabilities["cgroup"] in ("v1", "v2", "")
    if capabilities["cgroup"]:
        assert os.path.isdir(str(capabilities["cgroup_dir"]))
        assert capabilities["cgroup_unavailable"] == ""
        assert str(capabilities["process_limit"]).startswith("cgroup")
    else:
        assert capabilities["cgroup_unavailable"]
    assert capabilities["root"] is (os.geteuid() == 0)
    print(json.dumps(capabilities, indent=1))  # shown with -s: what this machine enforces


def test_stale_cgroups_of_dead_gateways_are_swept() -> None:
    base = need_cgroup()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Path(base, f"svc-{dead.pid}-1")
    stale.mkdir()
    sandbox_machine.probe.cache_clear()
    try:
        sandbox.sandbox_capabilities()
    finally:
        if stale.exists():
            stale.rmdir()
    assert not stale.exists()


# -- inside a real child -------------------------------------------------------------------


def test_high_child_limits_group_pdeathsig_and_private_dir(place: Place, build: Callable[..., Launch]) -> None:
    launch = build(DEFAULT, probe(place, "report"))
    seen = run_json(launch)
    assert seen["cwd"] == launch.path
    assert os.path.dirname(launch.path) == str(place.sandbox)
    assert seen["rlimits"]["CPU"] == [300, 301]  # SIGXCPU, then SIGKILL a second later
    assert seen["rlimits"]["DATA"] == [512 * MIB, 512 * MIB]
    assert seen["rlimits"]["FSIZE"] == [256 * MIB, 256 * MIB]
    assert seen["rlimits"]["NOFILE"] == list(resource.getrlimit(resource.RLIMIT_NOFILE))
    assert seen["group_leader"] and seen["sid"] == seen["pid"] == seen["pgid"]
    assert seen["sid"] != os.getsid(0)
    assert seen["pdeathsig"] == signal.SIGKILL
    assert seen["no_new_privs"] == 1
    assert seen["uid"] == os.getuid() and launch.uid is None
    if sandbox.sandbox_capabilities()["capability_drop"]:
        assert int(seen["status"]["CapEff"], 16) == 0
        assert int(seen["status"]["CapBnd"], 16) == 0
    if launch.cgroup:
        assert DEFAULT.limits is not None
        assert Path(launch.cgroup, "pids.max").read_text().strip() == str(DEFAULT.limits.task_limit())
        relative = launch.cgroup.split("/mcpgateway/", 1)[1]
        assert f"/mcpgateway/{relative}\n" in seen["cgroup"]
    else:
        assert sandbox.sandbox_capabilities()["cgroup"] == ""


def test_none_child_still_gets_group_pdeathsig_and_private_dir(place: Place, build: Callable[..., Launch]) -> None:
    launch = build(NONE, probe(place, "report"))
    seen = run_json(launch)
    assert launch.cgroup is None
    assert seen["cwd"] == launch.path
    assert seen["group_leader"] and seen["sid"] == seen["pid"]
    assert seen["pdeathsig"] == signal.SIGKILL
    assert seen["no_new_privs"] == 0
    for name in ("CPU", "DATA", "FSIZE", "NPROC"):
        assert seen["rlimits"][name] == list(resource.getrlimit(getattr(resource, f"RLIMIT_{name}"))), name
    assert seen["status"]["CapEff"] == Path("/proc/self/status").read_text().split("CapEff:")[1].split()[0]


def test_custom_limits_and_open_files(place: Place, build: Callable[..., Launch]) -> None:
    limits = ResourceLimits(cpu_seconds=7, memory_mb=1024, processes=None, file_size_mb=None, open_files=64)
    launch = build(SandboxPolicy(level="medium", limits=limits), probe(place, "report"))
    seen = run_json(launch)
    assert launch.cgroup is None  # no process limit: no cgroup
    assert seen["rlimits"]["CPU"] == [7, 8]
    assert seen["rlimits"]["DATA"] == [1024 * MIB, 1024 * MIB]
    assert seen["rlimits"]["NOFILE"] == [64, 64]
    assert seen["rlimits"]["FSIZE"][0] == -1


DANGEROUS = {
    "LD_PRELOAD": "/nonexistent/evil.so",
    "LD_LIBRARY_PATH": "/evil",
    "LD_AUDIT": "/evil.so",
    "LD_BIND_NOW": "1",
    "DYLD_INSERT_LIBRARIES": "/evil.dylib",
    "PYTHONSTARTUP": "/evil.py",
    "PYTHONINSPECT": "1",
    "NODE_OPTIONS": "--require=/evil.js",
    "BASH_ENV": "/evil.sh",
    "ENV": "/evil.sh",
    "PERL5OPT": "-Mevil",
    "RUBYOPT": "-revil",
    "GLIBC_TUNABLES": "glibc.malloc.check=3",
    "BASH_FUNC_ls%%": "() { evil; }",
    "MCP_AUTH_PASSWORD": "pw",
    "MCP_GATEWAY_SECRET": "gw",
}
GATEWAY_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "LANG": "en_US.UTF-8",
    "HOME": "/root-of-the-gateway",
    "KEEP_ME": "kept",
    "PASS_ME": "passed",
    "PYTHONPATH": "/gateway/code",
    "PWD": "/gateway/cwd",
    "COPY_OF_PASSWORD": PASSWORD,
    "COPY_OF_TOKEN": TOKEN,
    "EMPTY": "",
    **DANGEROUS,
}
SERVICE_ENV = {"SERVICE_VAR": "v", "LEAKED_TOKEN": TOKEN, **{name: "from-env" for name in DANGEROUS}}


def test_high_environment_is_exactly_the_allow_list(place: Place, build: Callable[..., Launch]) -> None:
    policy = SandboxPolicy(env_passthrough=("PASS_ME", "NOT_SET", "PYTHONPATH"))
    launch = build(policy, probe(place, "report"), env=SERVICE_ENV, gateway_env=GATEWAY_ENV)
    home = launch.path
    expected = {
        "PATH": GATEWAY_ENV["PATH"],
        "LANG": "en_US.UTF-8",
        "HOME": home,
        "TMPDIR": home,
        "TMP": home,
        "TEMP": home,
        "PASS_ME": "passed",
        "PYTHONPATH": "/gateway/code",
        "SERVICE_VAR": "v",
    }
    assert launch.env == expected
    assert run_json(launch)["environ"] == expected


def test_high_environment_defaults(place: Place, build: Callable[..., Launch]) -> None:
    launch = build(DEFAULT, probe(place, "report"), gateway_env={})
    assert launch.env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert launch.env["LANG"] == "C.UTF-8"
    launch = build(DEFAULT, probe(place, "report"), env={"HOME": "/srv/home", "LANG": "de_DE.UTF-8"}, gateway_env={})
    assert (launch.env["HOME"], launch.env["LANG"], launch.env["TMPDIR"]) == ("/srv/home", "de_DE.UTF-8", launch.path)


@pytest.mark.parametrize("policy", [MEDIUM, NONE], ids=["medium", "none"])
def test_medium_and_none_environment_is_the_gateways_minus_the_removed(
    place: Place, build: Callable[..., Launch], policy: SandboxPolicy
) -> None:
    launch = build(policy, probe(place, "report"), env=SERVICE_ENV, gateway_env=GATEWAY_ENV)
    expected = {
        "PATH": GATEWAY_ENV["PATH"],
        "LANG": "en_US.UTF-8",
        "HOME": "/root-of-the-gateway",
        "KEEP_ME": "kept",
        "PASS_ME": "passed",
        "EMPTY": "",
        "SERVICE_VAR": "v",
    }
    assert launch.env == expected
    assert run_json(launch)["environ"] == expected
    assert run_json(build(policy, probe(place, "report"), env={"PYTHONPATH": "/svc"}, gateway_env={}))["environ"] == {
        "PYTHONPATH": "/svc"
    }


def test_dropping_a_configured_variable_is_logged_once(place: Place) -> None:
    events: list[dict[str, Any]] = []
    service = f"logged-{os.getpid()}"
    globalLogPublisher.addObserver(events.append)
    try:
        for _ in range(2):
            build_launch(
                NONE,
                ("true",),
                service=service,
                workdir=place.workdir(),
                extra_env={"NODE_OPTIONS": "--max-old-space-size=64", "LD_PRELOAD": "x", "OK": "1"},
                gateway_env={},
                secrets=(),
            )
    finally:
        globalLogPublisher.removeObserver(events.append)
    said = sorted(event["name"] for event in events if event.get("service") == service)
    assert said == ["LD_PRELOAD", "NODE_OPTIONS"]


# -- containment -------------------------------------------------------------------------------


def _fork_bomb(launch: Launch) -> dict[str, Any]:
    process = subprocess.Popen(
        launch.args, executable=launch.executable, env=launch.env, cwd=launch.path, stdout=subprocess.PIPE
    )
    try:
        outcome = read_line(process)
        if launch.cgroup:
            outcome["pids.current"] = int(Path(launch.cgroup, "pids.current").read_text())
        os.kill(os.getpid(), 0)
        assert subprocess.run(["true"], check=False).returncode == 0  # the host still forks
    finally:
        _kill_group(process.pid)  # the child leads its own group: this takes the whole bomb
        process.wait(10)
        if process.stdout:
            process.stdout.close()
    if launch.cgroup:
        assert _wait_for(lambda: not _cgroup_members(str(launch.cgroup)), 5)
        assert launch.cleanup() and launch.cleanup()
        assert launch.cgroup is None
    return outcome


def test_fork_bomb_is_contained_by_the_cgroup(place: Place, build: Callable[..., Launch]) -> None:
    need_cgroup()
    launch = build(TEN_TASKS, probe(place, "forkbomb", "200"))
    directory = str(launch.cgroup)
    outcome = _fork_bomb(launch)
    assert outcome["error"] == "EAGAIN"
    assert 1 <= outcome["forked"] <= 9  # pids.max 10, the probe itself included
    assert outcome["pids.current"] <= 10
    assert not os.path.exists(directory)


def test_fork_bomb_is_contained_by_the_user(
    place: Place, build: Callable[..., Launch], user: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox_launch, "probe", machine_without(cgroup=None))
    policy = user_policy(user, limits=ResourceLimits(tasks=10))
    launch = build(policy, probe(place, "forkbomb", "200", python=python_for(user)))
    assert launch.cgroup is None and launch.uid == user[0]
    outcome = _fork_bomb(launch)
    assert outcome["error"] == "EAGAIN"
    assert 1 <= outcome["forked"] <= 9  # RLIMIT_NPROC 10 for this uid, the probe included


@pytest.mark.parametrize("bomb", ["forkbomb", "threadbomb"])
def test_default_limits_bound_fork_and_thread_bombs(place: Place, build: Callable[..., Launch], bomb: str) -> None:
    """
    The default task limit (10 processes x 64 threads, more on many cores)
    admits a Node or Python server but stops a bomb of either kind.
    """
    need_cgroup()
    assert DEFAULT.limits is not None
    tasks = DEFAULT.limits.task_limit()
    assert tasks is not None and tasks >= 640
    launch = build(DEFAULT, probe(place, bomb, str(tasks + 100)))
    outcome = _fork_bomb(launch)
    made = outcome["forked"] if bomb == "forkbomb" else outcome["threads"]
    assert outcome["error"], outcome  # refused before the bomb's own count ran out
    assert 1 <= made < tasks
    assert outcome["pids.current"] <= tasks


def test_memory_hog_gets_memory_error(place: Place, build: Callable[..., Launch]) -> None:
    assert run_json(build(DEFAULT, probe(place, "hog", "1024"))) == {"allocated": False, "error": "MemoryError"}
    assert run_json(build(DEFAULT, probe(place, "hog", "64"))) == {"allocated": True, "error": ""}


def test_disk_filler_gets_efbig_or_sigxfsz(place: Place, build: Callable[..., Launch]) -> None:
    ten = SandboxPolicy(limits=ResourceLimits(file_size_mb=10))
    launch = build(ten, probe(place, "fill", "20"))
    # Python ignores SIGXFSZ, so its write fails with EFBIG ...
    assert run_json(launch) == {"written": 10 * MIB, "size": 10 * MIB, "error": "EFBIG"}
    # ... where another program is killed by the signal.
    launch = build(ten, ("sh", "-c", "exec head -c 20971520 /dev/zero > big"))
    done = run(launch)
    assert done.returncode == -signal.SIGXFSZ, done
    assert os.path.getsize(os.path.join(launch.path, "big")) == 10 * MIB


INTERMEDIATE = """
import json, subprocess, sys, time
spec = json.loads(sys.argv[1])
child = subprocess.Popen(spec["args"], executable=spec["executable"], env=spec["env"], cwd=spec["path"],
                         stdout=subprocess.PIPE)
report = json.loads(child.stdout.readline())
print(json.dumps({"child": child.pid, "report": report}), flush=True)
time.sleep(3600)
"""


@pytest.mark.parametrize("variant", ["high", "none", "user", "python-shim"])
def test_sigkilled_parent_takes_the_child_along(
    place: Place,
    build: Callable[..., Launch],
    variant: str,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    python = sys.executable
    policy = {"high": DEFAULT, "none": NONE}.get(variant, DEFAULT)
    if variant == "user":
        ids = request.getfixturevalue("user")
        policy = user_policy(ids)
        python = python_for(ids)
    if variant == "python-shim":
        monkeypatch.setattr(sandbox_launch, "probe", machine_without(binaries={}))
    launch = build(policy, probe(place, "wait", python=python))
    if variant == "python-shim":
        assert launch.executable == sys.executable and sandbox_launch.SHIM in launch.args
    else:
        assert launch.executable == shutil.which("setsid")
    spec = {"args": launch.args, "executable": launch.executable, "env": launch.env, "path": launch.path}
    parent = subprocess.Popen([sys.executable, "-c", INTERMEDIATE, json.dumps(spec)], stdout=subprocess.PIPE)
    try:
        started = read_line(parent)
        child = started["child"]
        assert started["report"]["pid"] == child and started["report"]["ppid"] == parent.pid
        assert started["report"]["pdeathsig"] == signal.SIGKILL
        assert _alive(child)
        parent.kill()
        parent.wait(5)
        assert _wait_for(lambda: not _alive(child), 2), f"child {child} outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait(5)
        if parent.stdout:
            parent.stdout.close()


@pytest.mark.parametrize("as_user", [False, True], ids=["gateway-user", "own-user"])
def test_node_starts_under_the_default_limits(
    build: Callable[..., Launch], as_user: bool, request: pytest.FixtureRequest
) -> None:
    node = require_binary("node")
    policy = user_policy(request.getfixturevalue("user")) if as_user else DEFAULT
    script = "console.log(JSON.stringify({ok: true, threads: require('fs').readdirSync('/proc/self/task').length}))"
    launch = build(policy, (node, "-e", script))
    done = run(launch)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True


# -- the user ------------------------------------------------------------------------------------


def test_own_user_gets_nproc_and_its_private_dir(
    place: Place, build: Callable[..., Launch], user: tuple[int, int]
) -> None:
    launch = build(user_policy(user), probe(place, "report", python=python_for(user)))
    assert (launch.uid, launch.gid) == user
    seen = run_json(launch)
    assert (seen["uid"], seen["euid"], seen["gid"], seen["egid"], seen["groups"]) == (*user, *user, [])
    tasks = ResourceLimits().task_limit()
    assert seen["rlimits"]["NPROC"] == [tasks, tasks]
    assert seen["pdeathsig"] == signal.SIGKILL and seen["no_new_privs"] == 1
    assert int(seen["status"]["CapEff"], 16) == 0
    assert seen["cwd"] == launch.path == seen["environ"]["HOME"]
    assert seen["tmpdir_writable"]
    info = os.stat(launch.path)
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (*user, 0o700)


def test_own_user_needs_a_reachable_private_dir(place: Place, user: tuple[int, int]) -> None:
    closed = place.root / "closed"
    closed.mkdir(mode=0o700)
    workdir = tempfile.mkdtemp(dir=closed)
    with pytest.raises(SandboxError) as caught:
        build_launch(
            user_policy(user),
            ("true",),
            service="probe",
            workdir=workdir,
            extra_env={},
            gateway_env={},
            secrets=(),
        )
    assert caught.value.errno == errno.EACCES
    assert f"{closed} is closed to it" in str(caught.value.strerror)
    assert isinstance(caught.value, OSError)


def test_shared_working_dir_is_not_handed_over(place: Place, user: tuple[int, int]) -> None:
    shared = place.root / "shared"
    shared.mkdir(mode=0o700)
    policy = user_policy(user, working_dir=str(shared))
    with pytest.raises(SandboxError, match="cannot use its working directory"):
        build_launch(policy, ("true",), service="p", workdir=str(shared), extra_env={}, gateway_env={}, secrets=())
    assert os.stat(shared).st_uid == os.geteuid()  # never chowned
    shared.chmod(0o755)
    launch = build_launch(policy, ("true",), service="p", workdir=str(shared), extra_env={}, gateway_env={}, secrets=())
    launch.cleanup()
    assert os.stat(shared).st_uid == os.geteuid()


def test_a_gateway_that_is_not_root_cannot_switch_user(
    place: Place, monkeypatch: pytest.MonkeyPatch, user: tuple[int, int]
) -> None:
    monkeypatch.setattr(sandbox_launch, "probe", machine_without(can_setid=False))
    with pytest.raises(SandboxError, match="the gateway is not root") as caught:
        build_launch(
            user_policy(user), ("true",), service="p", workdir=place.workdir(), extra_env={}, gateway_env={}, secrets=()
        )
    assert caught.value.errno == errno.EPERM


# -- the python shim -------------------------------------------------------------------------------


@pytest.mark.parametrize("as_user", [False, True], ids=["gateway-user", "own-user"])
def test_python_shim_enforces_the_same(
    place: Place,
    build: Callable[..., Launch],
    monkeypatch: pytest.MonkeyPatch,
    as_user: bool,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.setattr(sandbox_launch, "probe", machine_without(binaries={}))
    python = sys.executable
    policy = DEFAULT
    if as_user:
        ids = request.getfixturevalue("user")
        policy, python = user_policy(ids), python_for(ids)
    launch = build(policy, probe(place, "report", python=python), gateway_env=GATEWAY_ENV)
    assert launch.executable == sys.executable
    seen = run_json(launch)
    assert seen["environ"] == launch.env
    assert seen["rlimits"]["DATA"] == [512 * MIB, 512 * MIB] and seen["rlimits"]["CPU"] == [300, 301]
    assert seen["group_leader"] and seen["sid"] == seen["pid"]
    assert seen["pdeathsig"] == signal.SIGKILL and seen["no_new_privs"] == 1
    if as_user:
        assert (seen["uid"], seen["gid"], seen["groups"]) == (*request.getfixturevalue("user"), [])
        tasks = ResourceLimits().task_limit()
        assert seen["rlimits"]["NPROC"] == [tasks, tasks]
    elif sandbox.sandbox_capabilities()["capability_drop"]:
        assert int(seen["status"]["CapBnd"], 16) == 0
    if launch.cgroup:
        assert launch.cgroup.split("/mcpgateway/", 1)[1] in seen["cgroup"]


# -- cleanup ---------------------------------------------------------------------------------------


def test_cleanup_kills_what_left_the_group_and_removes_the_cgroup(place: Place, build: Callable[..., Launch]) -> None:
    need_cgroup()
    launch = build(DEFAULT, probe(place, "escape"))
    directory = str(launch.cgroup)
    grandchild = run_json(launch)["grandchild"]
    assert _alive(grandchild) and os.getpgid(grandchild) == grandchild  # out of the child's group
    assert _cgroup_members(directory) == [grandchild]
    first = launch.cleanup()  # kills it; the directory goes now or on a later call
    assert _wait_for(lambda: not _alive(grandchild), 2)
    assert first or _wait_for(launch.cleanup, 2)
    assert not os.path.exists(directory) and launch.cleanup()


def test_failed_spawn_cleanup_and_no_cgroup_without_process_limit(place: Place) -> None:
    need_cgroup()
    launch = build_launch(
        DEFAULT,
        ("/nonexistent/program",),
        service="probe",
        workdir=place.workdir(),
        extra_env={},
        gateway_env={},
        secrets=(),
    )
    assert launch.cgroup and os.path.isdir(launch.cgroup)
    done = run(launch)
    assert done.returncode != 0 and "/nonexistent/program" in done.stderr
    assert launch.cleanup() and launch.cgroup is None
    unlimited = dataclasses.replace(DEFAULT, limits=ResourceLimits(processes=None))
    assert (
        build_launch(
            unlimited, ("true",), service="p", workdir=place.workdir(), extra_env={}, gateway_env={}, secrets=()
        ).cgroup
        is None
    )


def test_cgroup_name_is_safe(place: Place) -> None:
    base = need_cgroup()
    launch = build_launch(
        DEFAULT, ("true",), service="../../x y", workdir=place.workdir(), extra_env={}, gateway_env={}, secrets=()
    )
    try:
        assert launch.cgroup is not None
        assert os.path.dirname(launch.cgroup) == base
        assert os.path.basename(launch.cgroup).startswith(f"______x_y-{os.getpid()}-")
    finally:
        assert launch.cleanup()


def test_empty_command_is_refused(place: Place) -> None:
    with pytest.raises(ValueError):
        build_launch(DEFAULT, (), service="p", workdir=place.workdir(), extra_env={}, gateway_env={}, secrets=())


# -- as the gateway spawns it ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_twisted_spawn_of_an_mcp_server(place: Place, build: Callable[..., Launch]) -> None:
    launch = build(DEFAULT, probe(place, "serve"), env={"MCPGATEWAY_TEST_TAG": "sandbox"})
    protocol = ChildProtocol("probe", reactor, 1024 * 1024)
    reactor.spawnProcess(protocol, launch.executable, launch.args, env=launch.env, path=launch.path)
    try:
        await protocol.request(
            "initialize",
            {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
        )
        protocol.notify("notifications/initialized")
        result = await protocol.request("tools/call", {"name": "report", "arguments": {}})
        seen = json.loads(result["content"][0]["text"])
    finally:
        if protocol.transport is not None:
            protocol.transport.closeStdin()
    info = await protocol.ended.wait()
    assert info.exit_code == 0
    assert seen["pid"] == seen["pgid"] == seen["sid"] == protocol.pid
    assert seen["pdeathsig"] == signal.SIGKILL
    assert seen["environ"]["MCPGATEWAY_TEST_TAG"] == "sandbox" and seen["cwd"] == launch.path
    assert launch.cleanup()


def test_env_values_may_name_the_child_directory(place: Place, build: Callable[..., Launch]) -> None:
    launch = build(DEFAULT, ("true",), env={"MEMORY_FILE_PATH": "${MCPGATEWAY_CHILD_DIR}/memory.jsonl"})
    assert launch.env["MEMORY_FILE_PATH"] == os.path.join(launch.path, "memory.jsonl")
    assert launch.env["HOME"] == launch.path
