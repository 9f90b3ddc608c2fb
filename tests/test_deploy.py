"""
The packaging of C{deploy/}, C{Dockerfile} and C{compose.yaml}, on the host
(there is no Docker daemon here): the linters each file has (hadolint,
shellcheck, the compose specification's JSON schema, C{systemd-analyze
verify}, C{haproxy -c}), and every command the image runs, run here with the
image's paths mapped to a temporary directory: the wheel build, its install
with uv into a fresh virtual environment, the plugin cache, the C{HEALTHCHECK}
and the C{ENTRYPOINT} + C{CMD} on the shipped configuration.  Then the
HAProxy configuration in front of two real gateways, one of them draining.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcpgateway.config import ConfigError, parse_config

from .conftest import require_binary
from .test_cluster_haproxy import post
from .test_twistd import (
    _children_of,
    _wait_for_health,
    assert_no_tagged_processes,
    environment,
    free_port,
    http,
    running,
    twistd,
    write_config,
)

#: Third-party programs end to end: run once, in tox's e2e env (not per Python).
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
UNIT = REPO / "deploy" / "mcpgateway.service"
HAPROXY_CFG = REPO / "deploy" / "haproxy.cfg"
HEALTHCHECK = REPO / "deploy" / "healthcheck.py"
CTL = REPO / "deploy" / "mcpgateway-ctl"
DRAIN_TIMEOUT = parse_config({}).session.drain_timeout


# -- the Dockerfile, read as Docker reads it ---------------------------------------------------


def instructions(path: Path = DOCKERFILE) -> list[tuple[int, str, str]]:
    """
    @return: C{(stage, INSTRUCTION, arguments)} in order, continuation lines
        joined, comments dropped; stage 0 is the first C{FROM}'s.
    """
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    found = []
    stage = -1
    for text in logical:
        word, _, rest = text.partition(" ")
        word = word.upper()
        if word == "FROM":
            stage += 1
        found.append((stage, word, rest.strip()))
    return found


def one(word: str, stage: int = 1) -> str:
    [arguments] = [rest for at, found, rest in instructions() if at == stage and found == word]
    return arguments


def runs(stage: int) -> list[str]:
    return [rest for at, word, rest in instructions() if at == stage and word == "RUN"]


def exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), text
    return value


def image_env() -> dict[str, str]:
    """
    @return: The C{ENV} of the final stage.
    """
    env: dict[str, str] = {}
    for stage, word, rest in instructions():
        if stage == 1 and word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def copies() -> dict[str, str]:
    """
    @return: The final stage's C{COPY source destination} from the build
        context (not C{--from}), destination to source.
    """
    mapping = {}
    for stage, word, rest in instructions():
        if stage == 1 and word == "COPY" and not rest.startswith("--from"):
            source, destination = rest.split()
            mapping[destination] = source
    return mapping


def test_dockerfile_is_lint_clean() -> None:
    hadolint = require_binary("hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape() -> None:
    stages = [rest for _, word, rest in instructions() if word == "FROM"]
    assert len(stages) == 2 and all(re.match(r"python:3\.\d+-slim", base) for base in stages), stages
    assert one("USER") == "10001:10001", "non-root, numeric (runAsNonRoot can check it)"
    assert exec_form(one("ENTRYPOINT")) == ["tini", "--"]
    assert exec_form(one("CMD"))[:4] == ["twistd", "-n", "--pidfile=", "mcpgateway"]
    assert "HEALTHCHECK" in {word for _, word, _ in instructions()}
    installed = " ".join(runs(1))
    for package in ("nodejs", "npm", "tini", "util-linux"):
        assert re.search(rf"\b{package}\b", installed), package
    assert "uv==" in installed
    # Every file COPY takes from the context exists and is not excluded by .dockerignore.
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    for source in copies().values():
        assert (REPO / source).is_file(), source
        assert source.split("/")[0] not in ignored, source


# -- the image's commands, on the host ---------------------------------------------------------


def _context(destination: Path) -> Path:
    """
    Copy the build context as C{docker build} sends it: the repository
    without what C{.dockerignore} names (top-level names and C{**/} globs).
    """
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    top = {pattern for pattern in patterns if "/" not in pattern and "*" not in pattern}
    anywhere = [pattern[3:] for pattern in patterns if pattern.startswith("**/")]
    globs = [pattern for pattern in patterns if "*" in pattern and not pattern.startswith("**/")]

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {name for name in names if any(Path(name).match(pattern) for pattern in anywhere + globs)}
        if Path(directory) == REPO:
            skipped |= top & set(names)
        return skipped

    shutil.copytree(REPO, destination, ignore=ignore)
    return destination


def _image_path(path: str, root: Path) -> Path:
    return root / path.lstrip("/")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """
    The image built on the host: its root, with C{/venv} holding what the
    final stage's pip installed and its files at their image paths.
    """
    root = tmp_path_factory.mktemp("image")
    context = _context(root / "src")
    wheels = root / "wheels"
    [build] = runs(0)
    # pip wheel ... --wheel-dir /wheels .   (WORKDIR /src, the context copied there)
    command = shlex.split(build.replace("/wheels", str(wheels)))
    assert command[:2] == ["pip", "wheel"]
    subprocess.run([sys.executable, "-m", *command], cwd=context, check=True, capture_output=True, timeout=600)
    built = list(wheels.glob("mcpgateway-*.whl"))
    assert len(built) == 1, list(wheels.iterdir())

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    [install] = [run for run in runs(1) if run.startswith("pip install")]
    first, *rest = [part.strip() for part in install.split("&&")]
    uv_version = re.search(r"ARG UV_VERSION=(\S+)", DOCKERFILE.read_text())
    assert uv_version is not None
    first = first.replace("${UV_VERSION}", uv_version.group(1)).replace("/wheels/*.whl", str(built[0]))
    # The pip cache is allowed here (only the download differs), and pip runs quieter.
    arguments = [word for word in shlex.split(first)[2:] if word != "--no-cache-dir"]
    result = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", *arguments], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert rest[0] == "rm -rf /wheels"
    assert rest[1] == "twistd --help > /dev/null"  # as root at build time: writes dropin.cache
    result = subprocess.run([str(venv / "bin" / "twistd"), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and re.search(r"^\s+mcpgateway\s", result.stdout, re.M), result.stdout
    assert list(venv.glob("lib/python*/site-packages/twisted/plugins/dropin.cache"))

    for destination, source in copies().items():
        target = _image_path(destination, root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / source, target)
    (root / "var" / "lib" / "mcpgateway").mkdir(parents=True)
    yield root


def _image_environ(root: Path, **extra: str) -> dict[str, str]:
    """
    @return: The image's environment: its C{ENV}, the virtual environment's
        C{bin} first on C{PATH} (the image's C{/usr/local/bin}).
    """
    env = {key: value for key, value in environment().items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(root / "venv" / "bin"), "/usr/local/bin", "/usr/bin", "/bin"])
    env.update(image_env())
    env.update(extra)
    return env


def _image_command(words: list[str], root: Path) -> list[str]:
    """
    @return: C{words} with the image's absolute paths mapped into C{root}
        and C{python} the virtual environment's.
    """
    mapped = []
    for word in words:
        if word.startswith("/") and _image_path(word, root).exists():
            word = str(_image_path(word, root))
        elif word == "python":
            word = str(root / "venv" / "bin" / "python")
        mapped.append(word)
    return mapped


def _healthcheck(root: Path, port: int) -> int:
    words = exec_form(re.sub(r"^HEALTHCHECK.*?CMD\s+", "", "HEALTHCHECK " + one("HEALTHCHECK")))
    result = subprocess.run(
        _image_command(words, root),
        cwd=root / "var" / "lib" / "mcpgateway",
        env=_image_environ(root, MCP_PORT=str(port)),
        capture_output=True,
        timeout=30,
    )
    return result.returncode


def test_image_tools_run(image: Path) -> None:
    env = _image_environ(image)
    for tool in ("uv", "uvx"):
        result = subprocess.run([tool, "--version"], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout.startswith(tool.rstrip("x")), result
        assert shutil.which(tool, path=env["PATH"]) == str(image / "venv" / "bin" / tool)
    # Node and npm come from Debian's packages in the image; here, the host's.
    for tool in ("node", "npx", "setsid", "prlimit", "setpriv"):
        require_binary(tool)
    result = subprocess.run(["npx", "--version"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_image_entrypoint_cmd_and_healthcheck(image: Path) -> None:
    tini = require_binary("tini")
    workdir = image / "var" / "lib" / "mcpgateway"
    command = _image_command(exec_form(one("ENTRYPOINT")) + exec_form(one("CMD")), image)
    command[0] = tini
    assert Path(command[command.index("--config") + 1]).read_bytes() == (REPO / "config" / "config.json").read_bytes()
    port = free_port()

    # The image listens on every interface: the placeholder password is refused there.
    result = subprocess.run(
        command, cwd=workdir, env=_image_environ(image, MCP_PORT=str(port)), capture_output=True, timeout=60
    )
    assert result.returncode == 1
    assert b"the placeholder password 'changeme' is refused" in result.stdout + result.stderr
    assert _healthcheck(image, port) == 1, "nothing listens"

    tag = uuid.uuid4().hex
    env = _image_environ(image, MCP_PORT=str(port), MCP_AUTH_PASSWORD="image-pass-1", MCPGATEWAY_TEST_TAG=tag)
    auth = ("admin", "image-pass-1")
    with running(command, workdir, port, env, tag) as gateway:
        assert _healthcheck(image, port) == 0
        status, body = gateway.call("todo", "add_todo", "c1", auth, text="from the image")
        assert (status, body["result"]) == (200, "Added todo #1: from the image"), body
        [twistd_pid] = _children_of(gateway.process.pid)  # tini's one child
        children = _children_of(twistd_pid)
        assert children, "the session's child"
        assert (workdir / "sandbox").is_dir(), "the sandbox is under WORKDIR"

        status, body = http("POST", gateway.url + "/admin/drain", auth=auth)
        assert status == 202, body
        assert _healthcheck(image, port) == 1, "a draining gateway is unhealthy"
        assert http("DELETE", gateway.url + "/sessions/c1", auth=auth)[0] == 200
        # tini forwards SIGTERM to twistd, which drains (nothing left) and exits.
        status, took = gateway.stop(signal.SIGTERM, timeout=15)
        assert status == 128 + signal.SIGTERM, gateway.text()  # tini: the child's signal as 128 + n
        assert took < 5
        assert "Main loop terminated." in gateway.text()
        assert "Traceback" not in gateway.text()
    assert_no_tagged_processes(tag)
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or b"Z" in Path(f"/proc/{pid}/stat").read_bytes().split(b")")[-1][:3]


def test_healthcheck_speaks_tls_when_a_certificate_is_mounted(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    subprocess.run(
        [sys.executable, "-m", "mcpgateway.devcert", str(tmp_path / "certs" / "server.pem")],
        cwd=tmp_path,
        env=environment(),
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    config = write_config(tmp_path / "gateway.json", port, {})
    command = [*twistd(), "-n", "--pidfile=", "mcpgateway", "--config", str(config)]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        check = [sys.executable, str(HEALTHCHECK)]
        env = {**environment(), "MCP_PORT": str(port)}
        deadline = time.monotonic() + 20
        while subprocess.run(check, cwd=tmp_path, env=env, capture_output=True, timeout=30).returncode != 0:
            assert process.poll() is None and time.monotonic() < deadline, "never healthy over TLS"
            time.sleep(0.2)
        plain = subprocess.run(check, cwd=tmp_path, env={**env, "MCP_HEALTH_SCHEME": "http"}, capture_output=True)
        assert plain.returncode == 1, "plain HTTP to a TLS port is not healthy"
        wrong = subprocess.run(check, env={**env, "MCP_HEALTH_URL": "file:///etc/passwd"}, capture_output=True)
        assert (wrong.returncode, b"not an http(s) URL" in wrong.stderr) == (1, True)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


# -- compose, the helper script, systemd ---------------------------------------------------------


def test_compose_file() -> None:
    checker = require_binary("check-jsonschema")
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(REPO / "compose.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "gateway1", "gateway2", "haproxy"}
    servers = re.findall(r"^\s*server\s+(\S+)\s+(\S+):(\d+)", HAPROXY_CFG.read_text(), re.M)
    assert {(name, host) for name, host, _ in servers} == {("gateway1", "gateway1"), ("gateway2", "gateway2")}
    for name in ("gateway1", "gateway2"):
        gateway = services[name]
        assert gateway["build"] == "."
        grace = float(gateway["stop_grace_period"].rstrip("s"))
        assert grace > DRAIN_TIMEOUT, "Docker's SIGKILL comes after the drain"
        assert gateway["environment"]["MCP_RATE_LIMIT_STORAGE"].startswith("redis://redis:")
        assert ":?" in gateway["environment"]["MCP_AUTH_PASSWORD"], "required: the placeholder is refused"
        for volume in gateway["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (REPO / source).exists(), source
            if target == "/etc/mcpgateway/config.json":
                assert source == "./config/config.json"
    [haproxy_cfg] = [v for v in services["haproxy"]["volumes"] if v.startswith("./deploy/haproxy.cfg:")]
    assert haproxy_cfg.split(":")[1] == "/usr/local/etc/haproxy/haproxy.cfg"
    # The shipped configuration reads the storage compose gives it.
    config = parse_config(
        json.loads((REPO / "config" / "config.json").read_text()), {"MCP_RATE_LIMIT_STORAGE": "redis://redis:6379/0"}
    )
    assert config.rate_limiting.storage_uri == "redis://redis:6379/0"
    # One session space: each gateway is a cluster member, reached by the
    # other at its service name on a fixed internal port.
    shipped = json.loads((REPO / "config" / "config.json").read_text())
    assert not parse_config(shipped, {}).cluster.enabled, "the quick start runs on its own"
    internal = set()
    for name in ("gateway1", "gateway2"):
        gateway = services[name]
        environ = gateway["environment"]
        assert environ["MCP_CLUSTER_REDIS"] == environ["MCP_RATE_LIMIT_STORAGE"]
        assert environ["MCP_CLUSTER_SECRET"].startswith("${MCP_CLUSTER_SECRET:?"), "required, from .env"
        assert environ["MCP_CLUSTER_ADVERTISE"] == name
        assert str(environ["MCP_CLUSTER_PORT"]) in gateway["expose"]
        values = {key: str(value) for key, value in environ.items() if not str(value).startswith("${")}
        cluster = parse_config(shipped, {**values, "MCP_CLUSTER_SECRET": "s" * 32}).cluster
        assert cluster.enabled
        assert cluster.redis == "redis://redis:6379/0"
        assert (cluster.internal_host, cluster.advertise_host) == ("0.0.0.0", name)
        assert cluster.secret == "s" * 32
        internal.add(cluster.internal_port)
    assert len(internal) == 1 and internal != {0}, "a fixed internal port"
    with pytest.raises(ConfigError, match=r"cluster\.secret"):
        parse_config(shipped, {"MCP_CLUSTER_REDIS": "redis://redis:6379/0"})


def test_ctl_script(tmp_path: Path) -> None:
    shellcheck = require_binary("shellcheck")
    result = subprocess.run([shellcheck, str(CTL)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
    # A docker that records its arguments stands in for the real one (no daemon here).
    record = tmp_path / "calls"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(record))}\n')
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "HOME": str(tmp_path)}

    def ctl(*arguments: str) -> list[str]:
        record.write_text("")
        result = subprocess.run([str(CTL), *arguments], env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return [line for line in record.read_text().splitlines() if line != "compose version"]

    project = f"compose --project-directory {REPO} -f {REPO / 'compose.yaml'}"
    assert ctl("build") == [f"build --tag mcpgateway:latest {REPO}"]
    assert ctl("start") == [f"{project} up --detach"]
    assert ctl("stop") == [f"{project} stop"]
    assert ctl("logs", "gateway1") == [f"{project} logs --follow gateway1"]
    assert ctl("status") == [f"{project} ps"]
    assert ctl("restart") == [
        f"{project} stop gateway1",
        f"{project} up --detach --wait gateway1",
        f"{project} stop gateway2",
        f"{project} up --detach --wait gateway2",
    ]
    assert "rolling restart" in subprocess.run([str(CTL)], env=env, capture_output=True, text=True).stdout
    wrong = subprocess.run([str(CTL), "bogus"], env=env, capture_output=True, text=True)
    assert wrong.returncode == 2 and "unknown command 'bogus'" in wrong.stderr


def _unit() -> dict[str, str]:
    values = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def test_systemd_unit(tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze")
    unit = _unit()
    assert unit["Type"] == "simple" and unit["KillMode"] == "mixed"
    assert float(unit["TimeoutStopSec"].rstrip("s")) > DRAIN_TIMEOUT
    for key in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "ProtectHome", "ReadWritePaths", "User"):
        assert unit.get(key), key
    assert "ProtectControlGroups" not in unit and "MemoryDenyWriteExecute" not in unit
    # The installed twistd stands where the unit expects /opt/mcpgateway/bin/twistd.
    twistd_path = shutil.which("twistd") or twistd()[0]
    copy = tmp_path / "mcpgateway.service"
    copy.write_text(UNIT.read_text().replace("/opt/mcpgateway/bin/twistd", twistd_path))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    version = int(
        re.search(
            r"systemd (\d+)", subprocess.run([analyze, "--version"], capture_output=True, text=True).stdout
        ).group(1)
    )  # type: ignore[union-attr]
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and not (version < 254 and "Unknown key 'DelegateSubgroup'" in line)
    ]
    assert problems == [], problems


def test_systemd_exec_start_serves_the_shipped_config(tmp_path: Path) -> None:
    words = shlex.split(_unit()["ExecStart"])
    assert words[0] == "/opt/mcpgateway/bin/twistd"
    shutil.copy(REPO / "config" / "config.json", tmp_path / "config.json")
    words = [
        *twistd(),
        *(str(tmp_path / "config.json") if w == "/etc/mcpgateway/config.json" else w for w in words[1:]),
    ]
    port = free_port()
    tag = uuid.uuid4().hex
    env = environment(tag, MCP_PORT=str(port), MCP_AUTH_PASSWORD="unit-pass-1")
    with running(words, tmp_path, port, env, tag) as gateway:
        status, body = gateway.call("todo", "list_todos", "u1", ("admin", "unit-pass-1"))
        assert status == 200, body
        assert http("DELETE", gateway.url + "/sessions/u1", auth=("admin", "unit-pass-1"))[0] == 200
        status, took = gateway.stop(signal.SIGTERM)
        assert (status, took < 5) == (-signal.SIGTERM, True)
    assert_no_tagged_processes(tag)


# -- HAProxy in front of two gateways, one draining --------------------------------------------------


def _sessions(gateway: Any, auth: tuple[str, str]) -> set[str]:
    status, body = http("GET", gateway.url + "/sessions", auth=auth)
    assert status == 200
    return set(body)


def test_both_haproxy_files_have_one_retry_policy() -> None:
    """
    C{deploy/haproxy.cfg} (compose) and C{config/haproxy.cfg} (hosts) retry
    only a failed connection: never a 503, which may be C{session_lost}.
    """
    for path in (HAPROXY_CFG, REPO / "config" / "haproxy.cfg"):
        lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
        assert "retries 2" in lines and "option redispatch 1" in lines, path
        assert not [line for line in lines if line.startswith(("retry-on", "option http-buffer-request"))], path


def _call(url: str, session: str, auth: tuple[str, str]) -> tuple[int, Any, str | None]:
    """
    One C{add_todo} call of C{session}.

    @return: C{(status, decoded JSON body, Retry-After)}.
    """
    body = {"tool": "add_todo", "session_id": session, "arguments": {"text": session}}
    return post(url + "/services/todo/call", body, auth=auth)


def test_haproxy_takes_a_draining_gateway_out_of_rotation(tmp_path: Path) -> None:
    haproxy = require_binary("haproxy")
    ports = [free_port(), free_port()]
    front = free_port()
    cfg = HAPROXY_CFG.read_text().replace("bind :8080", f"bind 127.0.0.1:{front}")
    for index, port in enumerate(ports, 1):
        cfg = cfg.replace(f"gateway{index}:8080", f"127.0.0.1:{port}")
    (tmp_path / "haproxy.cfg").write_text(cfg)
    check = subprocess.run([haproxy, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    tag = uuid.uuid4().hex
    auth = ("admin", "s3cret")
    service = {
        "command": [sys.executable, "-m", "mcpgateway.examples.todo_server"],
        "env": {"MCPGATEWAY_TEST_TAG": tag},
    }
    commands = []
    for index, port in enumerate(ports):
        (tmp_path / f"g{index}").mkdir()
        config = write_config(tmp_path / f"g{index}" / "gateway.json", port, {"todo": service}, drain_timeout=20)
        commands.append([*twistd(), "-n", "--pidfile=", "mcpgateway", "--config", str(config)])
    balancer_log = (tmp_path / "haproxy.log").open("wb")
    balancer = subprocess.Popen(
        [haproxy, "-db", "-f", str(tmp_path / "haproxy.cfg")], stdout=balancer_log, stderr=subprocess.STDOUT
    )
    try:
        with (
            running(commands[0], tmp_path / "g0", ports[0], environment(tag), tag) as first,
            running(commands[1], tmp_path / "g1", ports[1], environment(tag), tag) as second,
        ):
            url = f"http://127.0.0.1:{front}"
            deadline = time.monotonic() + 20

            def through(session: str) -> tuple[int, Any]:
                body = {"tool": "add_todo", "session_id": session, "arguments": {"text": session}}
                return http("POST", url + "/services/todo/call", body, auth)

            # Sessions land on both (a hash of their id), once HAProxy's checks passed.
            index = 0
            while not (len(_sessions(first, auth)) >= 2 and _sessions(second, auth)):
                assert time.monotonic() < deadline, "the balancer never used both gateways"
                # Refused, or HAProxy's own 503 page before its checks pass: try again.
                with contextlib.suppress(OSError, ValueError):
                    through(f"before-{index}")
                index += 1
                time.sleep(0.1)
            # One of the first's sessions ends: its id, used again, is a new
            # session that HAProxy sends to the first gateway.
            again = sorted(_sessions(first, auth))[0]
            assert http("DELETE", f"{first.url}/sessions/{again}", auth=auth)[0] == 200
            live = _sessions(first, auth)

            status, body = http("POST", first.url + "/admin/drain", auth=auth)
            assert status == 202, body
            # Before the health check notices, a new session sent to the
            # draining gateway (these two are no cluster: it cannot pass it on)
            # gets its 503 draining (HAProxy does not retry a 503: it may be
            # session_lost); the client re-sends it after Retry-After, and once
            # HAProxy took the gateway out the session starts on the other.
            refused = 0
            for session in (again, *(f"during-{n}" for n in range(4))):
                for _ in range(10):
                    status, body, retry_after = _call(url, session, auth)
                    if status != 503:
                        break
                    assert (body["code"], retry_after) == ("draining", "1"), (body, retry_after)
                    refused += 1
                    time.sleep(float(retry_after))
                assert status == 200, (body, (tmp_path / "haproxy.log").read_text()[-3000:])
            assert refused, "the draining gateway was sent no new session before its check failed"
            # Within inter x fall (2 s x 2) HAProxy's check sees the 503 and stops trying it.
            time.sleep(5.5)
            for n in range(8):
                status, body = through(f"after-{n}")
                assert status == 200, body
            new = {again} | {f"during-{n}" for n in range(4)} | {f"after-{n}" for n in range(8)}
            assert new <= _sessions(second, auth)
            assert _sessions(first, auth) == live, "the draining gateway took no new session"
            # Its live sessions are still served (directly: the session directory is not this test's).
            session = sorted(live)[0]
            status, body = first.call("todo", "list_todos", session, auth)
            assert status == 200 and session in body["result"], body
            assert _wait_for_health(first, 503)["status"] == "draining"
            # Once their sessions end both exit on SIGTERM without waiting.
            for gateway in (first, second):
                for session in _sessions(gateway, auth):
                    assert http("DELETE", f"{gateway.url}/sessions/{session}", auth=auth)[0] == 200
                gateway.process.send_signal(signal.SIGTERM)
            for gateway in (first, second):
                assert gateway.process.wait(timeout=15) == -signal.SIGTERM
    finally:
        balancer.terminate()
        balancer.wait(timeout=10)
        balancer_log.close()
    assert_no_tagged_processes(tag)
