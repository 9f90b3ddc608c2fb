"""
The gateway as a user runs it: a real C{twistd -n mcpgateway --config PATH}
(or C{mcp-gateway}) subprocess, spoken to over HTTP on 127.0.0.1, stopped
with a signal.  Every test kills what it started.

The subprocesses get the repository root first on C{PYTHONPATH}, so they run
the code under test even when a strict editable install's link tree predates
a module added since.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import FIXTURE_SERVER, free_port, kill_tagged, tagged_processes

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
START_TIMEOUT = 20.0


def twistd() -> list[str]:
    """
    @return: The command running twistd: the script next to the interpreter,
        else twistd's C{run} (C{python -m twisted.scripts.twistd} does nothing).
    """
    script = BIN / "twistd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())"]


def mcp_gateway() -> list[str]:
    """
    @return: The command running the C{mcp-gateway} console script.
    """
    script = BIN / "mcp-gateway"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from mcpgateway.cli import main; main()"]


def environment(tag: str | None = None, **extra: str) -> dict[str, str]:
    """
    @return: This process's environment without the gateway's C{MCP_*}
        overrides, with the repository first on C{PYTHONPATH}.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("MCP_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.pop("MCPGATEWAY_TEST_TAG", None)
    if tag is not None:
        env["MCPGATEWAY_TEST_TAG"] = tag
    env.update(extra)
    return env


def http(
    method: str,
    url: str,
    body: Any = None,
    auth: tuple[str, str] | None = None,
    timeout: float = 15.0,
) -> tuple[int, Any]:
    """
    @return: C{(status, decoded JSON body)}.
    """
    headers = {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    assert url.startswith("http://127.0.0.1:"), url
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 (checked above)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


class Running:
    """
    A gateway subprocess, its output file and its URL.
    """

    def __init__(self, process: subprocess.Popen[bytes], output: Path, url: str) -> None:
        self.process = process
        self.output = output
        self.url = url

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def call(self, service: str, tool: str, session: str, auth: tuple[str, str], **arguments: Any) -> tuple[int, Any]:
        body = {"tool": tool, "session_id": session, "arguments": arguments}
        return http("POST", f"{self.url}/services/{service}/call", body, auth)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 5.0) -> tuple[int, float]:
        """
        Send C{signum}; wait for the exit.

        @return: The exit status and how long it took.
        """
        started = time.monotonic()
        self.process.send_signal(signum)
        status = self.process.wait(timeout=timeout)
        return status, time.monotonic() - started


@contextlib.contextmanager
def running(command: list[str], cwd: Path, port: int, env: dict[str, str], tag: str | None = None) -> Iterator[Running]:
    """
    Start C{command}, wait until C{/health} answers on C{port}, and on the
    way out kill it (and every process carrying C{tag}) if still there.
    """
    output = cwd / f"gateway-{uuid.uuid4().hex[:8]}.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)
    gateway = Running(process, output, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"the gateway exited with {process.returncode}:\n{gateway.text()}")
            try:
                status, body = http("GET", gateway.url + "/health", timeout=2)
            except OSError:
                status, body = 0, None
            if status == 200:
                assert body["status"] == "healthy"
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the gateway did not answer /health within {START_TIMEOUT} s:\n{gateway.text()}")
            time.sleep(0.05)
        yield gateway
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        if tag is not None:
            kill_tagged(tag)


def write_config(path: Path, port: int, services: dict[str, Any], drain_timeout: float = 0, **server: Any) -> Path:
    """
    A configuration for one gateway on C{port}.  Its C{session.drain_timeout}
    is 0 unless given: these tests are about stopping; the drain's wait is
    tested in section (h).
    """
    config = {
        "server": {"host": "127.0.0.1", "port": port, "auth_user": "admin", "auth_password": "s3cret", **server},
        "services": services,
        "session": {"sandbox_dir": str(path.parent / "sandbox"), "drain_timeout": drain_timeout},
    }
    path.write_text(json.dumps(config))
    return path


def assert_orderly_exit(gateway: Running, status: int, signum: int = signal.SIGTERM) -> None:
    """
    The process shut down in order, then ended the way twistd ends on a
    signal: it re-raises it once the reactor has stopped
    (C{twisted/scripts/twistd.py} C{runApp}), so the status is C{-signum}
    (143 or 130 in a shell), not 0; see L{test_signal_exit_status_is_zero}.
    """
    log = gateway.text()
    assert status == -signum, log
    assert "Main loop terminated." in log
    assert "Server Shut Down." in log
    assert "Traceback" not in log
    assert "Unhandled" not in log


def assert_no_tagged_processes(tag: str, within: float = 2.0) -> None:
    """
    SIGKILL is delivered asynchronously: allow a moment, then insist.
    """
    deadline = time.monotonic() + within
    while tagged_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.02)
    left = tagged_processes(tag)
    if left:
        kill_tagged(tag)
        pytest.fail(f"processes left behind: {left}")


# -- (a) the plugin is installed ---------------------------------------------------------------


def test_twistd_help_lists_the_plugin(tmp_path: Path) -> None:
    result = subprocess.run(
        [*twistd(), "--help"], cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert any(words[:1] == ["mcpgateway"] for words in lines), result.stdout
    sub = subprocess.run(
        [*twistd(), "mcpgateway", "--help"], cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=60
    )
    assert sub.returncode == 0, sub.stderr
    assert "--config=" in sub.stdout
    assert "--listen=" in sub.stdout


# -- (b) unusable configurations ---------------------------------------------------------------

BAD_CONFIGS = [
    pytest.param(None, "cannot read the configuration file", id="missing-file"),
    pytest.param('{"server": {"port": 8080,}', "not valid JSON", id="invalid-json"),
    pytest.param(
        {"server": {"port": "abc", "auth_user": "u", "auth_password": "p"}},
        "server.port: expected an integer, got 'abc'",
        id="port-not-a-number",
    ),
    pytest.param(
        {"server": {"auth_user": "u", "auth_password": 123456}},
        "server.auth_password: expected a string, got an integer",
        id="password-not-a-string",
    ),
    pytest.param(
        {"server": {"auth_user": "u", "auth_password": "p"}, "services": {"todo": {"command": []}}},
        "services.todo.command",
        id="empty-command",
    ),
    pytest.param(
        {"server": {"host": "0.0.0.0", "auth_user": "admin", "auth_password": "changeme"}},
        "server.auth_password: the placeholder password 'changeme' is refused",
        id="placeholder-password-on-all-interfaces",
    ),
]


@pytest.mark.parametrize(("content", "expected"), BAD_CONFIGS)
def test_unusable_configuration_exits_with_one_clear_line(tmp_path: Path, content: Any, expected: str) -> None:
    config = tmp_path / "gateway.json"
    if content is not None:
        config.write_text(content if isinstance(content, str) else json.dumps(content))
    before = config.read_bytes() if config.exists() else None
    listing = sorted(os.listdir(tmp_path))
    started = time.monotonic()
    result = subprocess.run(
        [*twistd(), "-n", "--pidfile=", "mcpgateway", "--config", str(config)],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert elapsed < 15, f"took {elapsed:.1f} s"
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("mcpgateway: configuration error: "), output
    assert str(config) in lines[0]
    assert expected in lines[0]
    # Nothing was written on the user's behalf: no config, no pid file, no sandbox.
    assert (config.read_bytes() if config.exists() else None) == before
    assert sorted(os.listdir(tmp_path)) == listing


# -- (c) the shipped configuration -------------------------------------------------------------


def _children_of(pid: int) -> list[int]:
    """
    @return: Live processes whose parent is C{pid}.
    """
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid and stat[0] != b"Z":
                found.append(int(entry))
    return found


def test_shipped_config_serves_the_todo_example(tmp_path: Path) -> None:
    shutil.copy(REPO / "config" / "config.json", tmp_path / "config.json")
    shipped = (tmp_path / "config.json").read_bytes()
    port = free_port()
    tag = uuid.uuid4().hex
    env = environment(tag, MCP_PORT=str(port))
    command = [*twistd(), "-n", "--pidfile=", "mcpgateway", "--config", "config.json"]
    with running(command, tmp_path, port, env, tag) as gateway:
        status, body = http("GET", gateway.url + "/health")
        assert (status, body["status"]) == (200, "healthy")
        status, services = http("GET", gateway.url + "/services", auth=("admin", "changeme"))
        assert status == 200
        assert set(services) == {"todo"}
        admin = ("admin", "changeme")
        status, body = gateway.call("todo", "add_todo", "call-1", admin, text="buy milk")
        assert status == 200, body
        assert body["result"] == "Added todo #1: buy milk"
        status, body = gateway.call("todo", "list_todos", "call-1", admin)
        assert body["result"] == "#1 [ ] buy milk"
        assert body["structured_content"] == {"todos": [{"id": 1, "text": "buy milk", "done": False}]}
        status, body = http("GET", gateway.url + "/services", auth=("admin", "wrong"))
        assert (status, body["code"]) == (401, "unauthorized")
        status, tools = http("GET", gateway.url + "/services/todo/tools", auth=admin)
        assert {tool["name"] for tool in tools["tools"]} == {"add_todo", "list_todos", "complete_todo", "delete_todo"}
        # The child runs in the default (high) sandbox: the gateway's environment,
        # test tag included, does not reach it; its parent is twistd.
        # (The short-lived child that listed the tools may still be exiting.)
        deadline = time.monotonic() + 5
        while len(children := _children_of(gateway.process.pid)) != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(children) == 1, "the session's child"
        environ = Path(f"/proc/{children[0]}/environ").read_bytes().split(b"\0")
        assert f"MCPGATEWAY_TEST_TAG={tag}".encode() not in environ
        assert any(entry.startswith(b"HOME=" + str(tmp_path / "sandbox").encode()) for entry in environ)
        # The relative sandbox_dir is under the working directory.
        assert (tmp_path / "sandbox").is_dir()
        # SIGTERM drains: with the session closed first there is nothing to wait for.
        assert http("DELETE", gateway.url + "/sessions/call-1", auth=admin)[0] == 200
        exit_status, took = gateway.stop(signal.SIGTERM)
        assert took < 5
        assert_orderly_exit(gateway, exit_status, signal.SIGTERM)
        assert "todo: child" in gateway.text()
        assert "drained: no session is left" in gateway.text()
    assert_no_tagged_processes(tag)
    assert (tmp_path / "config.json").read_bytes() == shipped


# -- (d, e) shutdown by signal -----------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_gateway_and_every_child(tmp_path: Path, signum: int) -> None:
    port = free_port()
    tag = uuid.uuid4().hex
    stubborn = {
        "command": [sys.executable, FIXTURE_SERVER, "--ignore-eof", "--ignore-sigterm"],
        "env": {"MCPGATEWAY_TEST_TAG": tag},
        "close_grace": 0.3,
    }
    config = write_config(tmp_path / "gateway.json", port, {"stubborn": stubborn})
    auth = ("admin", "s3cret")
    command = [*twistd(), "-n", "--pidfile=", "mcpgateway", "--config", str(config)]
    with running(command, tmp_path, port, environment(), tag) as gateway:
        status, body = gateway.call("stubborn", "spawn_grandchild", "one", auth)
        assert status == 200, body
        grandchild = int(body["result"])
        for session in ("two", "three"):
            status, body = gateway.call("stubborn", "counter", session, auth)
            assert (status, body["result"]) == (200, "1")
        assert gateway.call("stubborn", "counter", "two", auth)[1]["result"] == "2"
        status, sessions = http("GET", gateway.url + "/sessions", auth=auth)
        assert set(sessions) == {"one", "two", "three"}
        census = tagged_processes(tag)
        assert len(census) == 4, "three children and a grandchild"
        assert grandchild in census

        exit_status, took = gateway.stop(signum, timeout=5)
        assert took < 5
        assert_orderly_exit(gateway, exit_status, signum)
        # The stubborn children outlived stdin and SIGTERM: SIGKILL to their groups ended them.
        assert gateway.text().count("killed by signal 9") == 3
    assert_no_tagged_processes(tag)


def test_mcp_gateway_script_with_listen_override(tmp_path: Path) -> None:
    port = free_port()
    configured = free_port()
    tag = uuid.uuid4().hex
    todo = {"command": [sys.executable, "-m", "mcpgateway.examples.todo_server"]}
    config = write_config(tmp_path / "gateway.json", configured, {"todo": todo})
    command = [*mcp_gateway(), "-c", str(config), "--listen", f"tcp:{port}:interface=127.0.0.1"]
    with running(command, tmp_path, port, environment(tag), tag) as gateway:
        status, body = http("GET", gateway.url + "/health")
        assert (status, body["status"]) == (200, "healthy")
        status, body = gateway.call("todo", "add_todo", "s", ("admin", "s3cret"), text="via mcp-gateway")
        assert (status, body["result"]) == (200, "Added todo #1: via mcp-gateway")
        # --listen replaces server.host/port: nothing listens on the configured port.
        with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
            probe.connect(("127.0.0.1", configured))
        # It logs to standard output by default.
        assert "GatewaySite starting on" in gateway.text()
        exit_status, _ = gateway.stop(signal.SIGTERM)
        assert_orderly_exit(gateway, exit_status, signal.SIGTERM)
    assert_no_tagged_processes(tag)


def test_mcp_gateway_script_bad_config_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [*mcp_gateway(), "-c", str(tmp_path / "absent.json")],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    assert [line for line in output.splitlines() if line.strip()] == [
        f"mcpgateway: configuration error: {tmp_path / 'absent.json'}: "
        "cannot read the configuration file: No such file or directory"
    ]
    assert not (tmp_path / "absent.json").exists()


# -- (g) digit-only passwords stay strings ------------------------------------------------------


def test_numeric_password_in_the_file_works_for_basic_auth(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "gateway.json", port, {}, auth_password="123456")
    command = [*twistd(), "-n", "--pidfile=", "mcpgateway", "--config", str(config)]
    with running(command, tmp_path, port, environment()) as gateway:
        status, body = http("GET", gateway.url + "/services", auth=("admin", "123456"))
        assert (status, body) == (200, {})
        status, body = http("GET", gateway.url + "/sessions", auth=("admin", "123456"))
        assert (status, body) == (200, {})
        status, body = http("GET", gateway.url + "/services", auth=("admin", "1234567"))
        assert (status, body["code"]) == (401, "unauthorized")
        assert_orderly_exit(gateway, gateway.stop()[0])


def test_numeric_password_from_the_environment_keeps_leading_zeros(tmp_path: Path) -> None:
    shutil.copy(REPO / "config" / "config.json", tmp_path / "config.json")
    port = free_port()
    tag = uuid.uuid4().hex
    env = environment(tag, MCP_PORT=str(port), MCP_AUTH_PASSWORD="000123")
    command = [*twistd(), "-n", "--pidfile=", "mcpgateway", "--config", "config.json"]
    with running(command, tmp_path, port, env, tag) as gateway:
        status, _ = http("GET", gateway.url + "/services", auth=("admin", "000123"))
        assert status == 200
        for wrong in ("123", "changeme"):
            status, body = http("GET", gateway.url + "/services", auth=("admin", wrong))
            assert (status, body["code"]) == (401, "unauthorized"), wrong
        assert_orderly_exit(gateway, gateway.stop()[0])
    assert_no_tagged_processes(tag)


def test_a_call_cut_by_shutdown_is_answered_503_and_logged(tmp_path: Path) -> None:
    port = free_port()
    tag = uuid.uuid4().hex
    service = {"command": [sys.executable, FIXTURE_SERVER], "env": {"MCPGATEWAY_TEST_TAG": tag}}
    config = json.loads(write_config(tmp_path / "gateway.json", port, {"fx": service}).read_text())
    access = tmp_path / "access.jsonl"
    config["logging"] = {"access_log": str(access)}
    (tmp_path / "gateway.json").write_text(json.dumps(config))
    command = [*twistd(), "-n", "--pidfile=", "mcpgateway", "--config", str(tmp_path / "gateway.json")]
    answers: list[tuple[int, Any]] = []
    with running(command, tmp_path, port, environment(), tag) as gateway:
        caller = threading.Thread(
            target=lambda: answers.append(gateway.call("fx", "sleep", "cut", ("admin", "s3cret"), seconds=30))
        )
        caller.start()
        deadline = time.monotonic() + 10
        while "cut" not in http("GET", gateway.url + "/sessions", auth=("admin", "s3cret"))[1]:
            assert time.monotonic() < deadline, "the call never opened its session"
            time.sleep(0.05)
        time.sleep(0.3)  # the child has the request (test thread only; the gateway is another process)
        exit_status, took = gateway.stop(signal.SIGTERM, timeout=10)
        assert took < 5
        caller.join(10)
        assert_orderly_exit(gateway, exit_status)
    assert_no_tagged_processes(tag)
    [(status, body)] = answers
    assert (status, body["code"]) == (503, "service_unavailable"), body
    lines = [json.loads(line) for line in access.read_text().splitlines()]
    assert [(line["session"], line["status"]) for line in lines] == [("cut", 503)], lines


# -- (f) per-principal secrets: refused at start, reloaded on SIGHUP ---------------------------------------


CREDENTIAL_SERVER = str(Path(FIXTURE_SERVER).parent / "credential_server.py")
ALICE = ("alice", "alice-password-1")
OLD_TOKEN = "tok-alice-old-61f0e2b9"
NEW_TOKEN = "tok-alice-new-0d93c7a4"


def _secrets_config(tmp_path: Path, port: int, tag: str, mode: int = 0o600) -> tuple[Path, Path]:
    """
    @return: The configuration (service C{gh}, alice's token from a secrets
        file) and the secrets file, holding L{OLD_TOKEN} with C{mode}.
    """
    from mcpgateway.policy.auth import hash_password

    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"alice-github": OLD_TOKEN}))
    secrets.chmod(mode)
    service = {
        "command": [sys.executable, CREDENTIAL_SERVER],
        "env": {"MCPGATEWAY_TEST_TAG": tag},
        "credentials": {"principals": {"alice": {"env": {"GITHUB_TOKEN": "alice-github"}}}},
        "close_grace": 0.5,
    }
    principal = {"name": "alice", "role": "agent", "password_hash": hash_password(ALICE[1], n=2**10)}
    config = write_config(tmp_path / "gateway.json", port, {"gh": service}, principals=[principal])
    raw = json.loads(config.read_text())
    raw["secrets"] = {"file": str(secrets)}
    config.write_text(json.dumps(raw))
    return config, secrets


def test_a_secrets_file_others_may_read_stops_the_start(tmp_path: Path) -> None:
    config, secrets = _secrets_config(tmp_path, free_port(), uuid.uuid4().hex, mode=0o644)
    result = subprocess.run(
        [*twistd(), "-n", "--pidfile=", "mcpgateway", "--config", str(config)],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert output.strip() == (
        f"mcpgateway: configuration error: {config}: secrets.file: {secrets}: mode 0644 lets others read it; "
        f"it must be 0600 or stricter (chmod 600 {secrets})"
    )


def test_sighup_reloads_the_secrets_for_new_children_only(tmp_path: Path) -> None:
    port = free_port()
    tag = uuid.uuid4().hex
    config, secrets = _secrets_config(tmp_path, port, tag)
    command = [*twistd(), "-n", "--pidfile=", "mcpgateway", "--config", str(config)]

    def whoami(gateway: Running, session: str) -> dict[str, Any]:
        status, body = gateway.call("gh", "whoami", session, ALICE)
        assert status == 200, body
        return dict(json.loads(body["result"]))

    def hang_up(gateway: Running, expected: str) -> None:
        seen = gateway.text().count(expected)
        gateway.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while gateway.text().count(expected) == seen:
            assert time.monotonic() < deadline, gateway.text()
            time.sleep(0.05)

    with running(command, tmp_path, port, environment(), tag) as gateway:
        first = whoami(gateway, "s1")
        assert first["token"] == OLD_TOKEN

        replacement = tmp_path / "secrets.new"
        replacement.write_text(json.dumps({"alice-github": NEW_TOKEN}))
        replacement.chmod(0o600)
        os.replace(replacement, secrets)
        hang_up(gateway, "secrets reloaded: 1 secrets")

        # The running child keeps the token it was started with; a new one gets the new token.
        assert whoami(gateway, "s1") == first
        second = whoami(gateway, "s2")
        assert second["token"] == NEW_TOKEN
        assert second["pid"] != first["pid"]

        # Both children leak their tokens to stderr: both are redacted in the log.
        for session in ("s1", "s2"):
            status, body = gateway.call("gh", "leak", session, ALICE)
            assert status == 422, body
            assert body["error"].endswith("the API refused token [secret:alice-github]")

        # A bad reload keeps the secrets in use, and says why.
        secrets.chmod(0o644)
        hang_up(gateway, "secrets reload failed")
        assert whoami(gateway, "s3")["token"] == NEW_TOKEN

        exit_status, _ = gateway.stop()
        assert_orderly_exit(gateway, exit_status)
        log = gateway.text()
        assert f"the old secrets stay in use: secrets.file: {secrets}: mode 0644 lets others read it" in log
        assert log.count("debug: calling the API with token [secret:alice-github]") == 2
        assert OLD_TOKEN not in log
        assert NEW_TOKEN not in log
    assert_no_tagged_processes(tag)


# -- (h) graceful drain on SIGTERM --------------------------------------------------------------


def _retry_after(url: str, body: Any, auth: tuple[str, str]) -> tuple[int, str | None, Any]:
    """
    C{POST url}; returns the status, the C{Retry-After} header and the decoded body.
    """
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode(),
    }
    assert url.startswith("http://127.0.0.1:"), url
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310
            return response.status, response.headers.get("Retry-After"), json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers.get("Retry-After"), json.loads(error.read())


def _wait_for_health(gateway: Running, status: int, within: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        code, body = http("GET", gateway.url + "/health", timeout=2)
        if code == status:
            return dict(body)
        assert time.monotonic() < deadline, (code, body, gateway.text()[-3000:])
        time.sleep(0.05)


def _drain_config(tmp_path: Path, port: int, tag: str, drain_timeout: float) -> list[str]:
    service = {"command": [sys.executable, FIXTURE_SERVER], "env": {"MCPGATEWAY_TEST_TAG": tag}, "close_grace": 0.5}
    config = write_config(tmp_path / "gateway.json", port, {"fx": service}, drain_timeout=drain_timeout)
    return [*twistd(), "-n", "--pidfile=", "mcpgateway", "--config", str(config)]


def test_sigterm_drains_live_sessions_then_exits(tmp_path: Path) -> None:
    port = free_port()
    tag = uuid.uuid4().hex
    auth = ("admin", "s3cret")
    command = _drain_config(tmp_path, port, tag, drain_timeout=60)
    answers: list[tuple[int, Any]] = []
    with running(command, tmp_path, port, environment(), tag) as gateway:
        for count in ("1", "2"):
            status, body = gateway.call("fx", "counter", "live", auth)
            assert (status, body["result"]) == (200, count), body
        caller = threading.Thread(
            target=lambda: answers.append(gateway.call("fx", "sleep", "live", auth, seconds=1.5)), daemon=True
        )
        caller.start()
        time.sleep(0.3)  # the call is in flight (test thread only; the gateway is another process)
        gateway.process.send_signal(signal.SIGTERM)

        # The balancer's health check sees it down, with the body it knows.
        health = _wait_for_health(gateway, 503)
        assert (health["status"], health["sessions"], health["drained"]) == ("draining", 1, False)
        assert {"timestamp", "version", "drain_deadline"} <= set(health)
        # A new session is refused with a retryable 503 (the balancer sends the retry elsewhere).
        status, retry_after, body = _retry_after(
            gateway.url + "/services/fx/call", {"tool": "counter", "session_id": "new"}, auth
        )
        assert (status, body["code"], retry_after) == (503, "draining", "1"), body
        # The call in flight completes; the live session goes on.
        caller.join(10)
        [(status, body)] = answers
        assert (status, body["result"]) == (200, "slept 1.5"), body
        status, body = gateway.call("fx", "counter", "live", auth)
        assert (status, body["result"]) == (200, "3"), body
        assert gateway.process.poll() is None, "still draining"
        assert len(tagged_processes(tag)) == 1

        # The session ends: the drain is over and the process exits.
        started = time.monotonic()
        assert http("DELETE", gateway.url + "/sessions/live", auth=auth)[0] == 200
        status = gateway.process.wait(timeout=10)
        assert time.monotonic() - started < 5
        assert_orderly_exit(gateway, status)
        log = gateway.text()
        assert "draining: new sessions refused; 1 live session(s)" in log
        assert "drained: no session is left" in log
        assert "drain deadline" not in log
    assert_no_tagged_processes(tag)


def test_drain_timeout_closes_the_remaining_children(tmp_path: Path) -> None:
    port = free_port()
    tag = uuid.uuid4().hex
    auth = ("admin", "s3cret")
    command = _drain_config(tmp_path, port, tag, drain_timeout=1.5)
    with running(command, tmp_path, port, environment(), tag) as gateway:
        for session in ("one", "two"):
            assert gateway.call("fx", "counter", session, auth)[0] == 200
        assert len(tagged_processes(tag)) == 2
        answers: list[tuple[int, Any]] = []
        caller = threading.Thread(
            target=lambda: answers.append(gateway.call("fx", "sleep", "one", auth, seconds=30)), daemon=True
        )
        caller.start()
        time.sleep(0.3)  # the call is in flight (test thread only; the gateway is another process)
        status, took = gateway.stop(signal.SIGTERM, timeout=10)
        assert 1.4 < took < 5, took
        assert_orderly_exit(gateway, status)
        assert "drain deadline: closing 2 live session(s)" in gateway.text()
        caller.join(10)
        # Cut by the deadline: answered as at a stop, safe to retry elsewhere.
        [(status, body)] = answers
        assert (status, body["code"]) == (503, "service_unavailable"), body
    assert_no_tagged_processes(tag)


def test_a_second_signal_cuts_the_drain_short(tmp_path: Path) -> None:
    port = free_port()
    tag = uuid.uuid4().hex
    command = _drain_config(tmp_path, port, tag, drain_timeout=60)
    with running(command, tmp_path, port, environment(), tag) as gateway:
        assert gateway.call("fx", "counter", "one", ("admin", "s3cret"))[0] == 200
        gateway.process.send_signal(signal.SIGTERM)
        _wait_for_health(gateway, 503)
        status, took = gateway.stop(signal.SIGINT, timeout=10)
        assert took < 5, took
        assert_orderly_exit(gateway, status, signal.SIGTERM)  # twistd re-raises the first one
        assert "drain deadline: closing 1 live session(s)" in gateway.text()
    assert_no_tagged_processes(tag)


def test_admin_drain_keeps_the_process_up_drained(tmp_path: Path) -> None:
    port = free_port()
    tag = uuid.uuid4().hex
    auth = ("admin", "s3cret")
    command = _drain_config(tmp_path, port, tag, drain_timeout=0.5)
    with running(command, tmp_path, port, environment(), tag) as gateway:
        assert gateway.call("fx", "counter", "one", auth)[0] == 200
        status, body = http("POST", gateway.url + "/admin/drain", auth=auth)
        assert (status, body["status"], body["sessions"]) == (202, "draining", 1), body
        deadline = time.monotonic() + 10
        while not _wait_for_health(gateway, 503)["drained"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert_no_tagged_processes(tag)
        time.sleep(0.5)
        assert gateway.process.poll() is None, "POST /admin/drain does not end the process"
        # SIGTERM on a drained process has nothing to wait for.
        status, took = gateway.stop(signal.SIGTERM)
        assert took < 5
        assert_orderly_exit(gateway, status)
