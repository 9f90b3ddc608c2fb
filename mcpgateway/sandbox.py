"""
The child-process sandbox: how an MCP server is started so that it cannot
outlive the gateway, exhaust the host, or read the gateway's secrets.

The seeds' keys decide the level: C{enabled: false} is C{none},
C{restricted_env: false} is C{medium}, anything else C{high}; C{level}
overrides them; C{resource_limits: false} turns the limits off.

  ========  ========================  ==========================  ==============
  level     limits (rlimits, pids)    environment                 privileges
  ========  ========================  ==========================  ==============
  high      yes                       allow-list only             no_new_privs;
                                                                  a root child
                                                                  loses every
                                                                  capability
  medium    yes                       gateway's minus removed     as high
  none      no                        gateway's minus removed     unchanged
  ========  ========================  ==========================  ==============

The allow-list is C{PATH}, C{LANG} (default C{C.UTF-8}), C{HOME}, C{TMPDIR},
C{TMP} and C{TEMP} (the child's private directory), the service's C{env} and
the C{env_passthrough} variables.  At every level: L{ALWAYS_REMOVED} and the
L{ALWAYS_REMOVED_PREFIXES} go, whatever their source; so does any variable
whose value is one of the gateway's secrets; L{NOT_INHERITED} are not taken
from the gateway's environment (but are kept when named in C{env} or
C{env_passthrough}).  At every level the child leads its own session and
process group, has C{PR_SET_PDEATHSIG} = C{SIGKILL} (a SIGKILLed gateway takes
its children with it), runs in its private directory, and runs as
C{user}/C{group} when they are configured.

The child starts through a chain of programs that each change one thing and
exec the next in place (about a millisecond each)::

    setsid -- [sh -c 'echo $$ >.../cgroup.procs; exec "$@"'] \\
        prlimit --cpu= --data= --fsize= [--nofile=] [--nproc=] -- \\
        setpriv --pdeathsig KILL [--nnp] [--reuid --regid --clear-groups] \\
                [--inh-caps -all --bounding-set -all] -- command

(util-linux 2.38.)  C{setpriv} sets the parent-death signal after changing
the ids (a change of credentials clears it), and it survives the exec of a
program that is not set-user-ID or file-capable.  The cgroup is joined by a
shell builtin (C{echo $$}), as root, before anything else runs: util-linux
has no program that does it and execs in place.  Without C{setsid},
C{prlimit} or C{setpriv} one Python shim (C{python -I -S -c ...}, ~25 ms
instead of ~3) does all of it.

The process limit is enforced twice where the machine allows it: a cgroup
with C{pids.max} (v2 if the C{pids} controller can be enabled below the
gateway's cgroup, else the v1 C{pids} hierarchy), and C{RLIMIT_NPROC}, which
counts every process of the child's real uid and never binds root, so it is
only set when the child runs as its own C{user}.  Both count threads.
L{sandbox_capabilities} says what this machine enforces.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import grp
import itertools
import json
import os
import pwd
import re
import shutil
import signal
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .logs import logger

__all__ = [
    "Launch",
    "ResourceLimits",
    "SandboxError",
    "SandboxPolicy",
    "build_launch",
    "policy_from_config",
    "sandbox_capabilities",
]

log = logger(__name__)

Level = Literal["high", "medium", "none"]
_LEVELS: tuple[Level, ...] = ("high", "medium", "none")

# -- the environment ----------------------------------------------------------

#: Removed at every level, from every source (inherited, C{env}, passthrough):
#: variables that make a program load or run code it was not asked to.
ALWAYS_REMOVED = frozenset(
    {
        "PYTHONSTARTUP",
        "PYTHONINSPECT",
        "NODE_OPTIONS",
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PERL5OPT",
        "PERL5DB",
        "RUBYOPT",
        "GLIBC_TUNABLES",
        "GCONV_PATH",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
    }
)
#: Name prefixes removed at every level: the dynamic loaders', exported bash
#: functions, and the gateway's own credentials.
ALWAYS_REMOVED_PREFIXES = ("LD_", "DYLD_", "BASH_FUNC_", "MCP_AUTH_", "MCP_GATEWAY_")
#: Never inherited from the gateway, but kept when named in C{env} or
#: C{env_passthrough}: module search paths (the gateway's C{PYTHONPATH} is for
#: the gateway's code; pointing a server at its own code is what they are
#: for), and C{PWD}/C{OLDPWD}, which describe the gateway's directory, not the
#: child's.
NOT_INHERITED = frozenset({"PYTHONPATH", "PYTHONHOME", "NODE_PATH", "PERL5LIB", "PERLLIB", "RUBYLIB", "PWD", "OLDPWD"})

_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_DEFAULT_LANG = "C.UTF-8"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _always_removed(name: str) -> bool:
    upper = name.upper()
    return upper in ALWAYS_REMOVED or upper.startswith(ALWAYS_REMOVED_PREFIXES)


# -- the policy ---------------------------------------------------------------


@dataclass(frozen=True)
class ResourceLimits:
    """
    The C{resource_limits} object; L{None} in a field means unlimited.

    @ivar cpu_seconds: C{RLIMIT_CPU} (SIGXCPU, then SIGKILL).
    @ivar memory_mb: C{RLIMIT_DATA} in MiB (heap and private writable
        mappings; C{RLIMIT_AS} would kill Node, whose V8 reserves far more
        address space than it uses).  Node 20 starts with 64 MiB, hangs with 32.
    @ivar processes: C{pids.max} of the child's cgroup and, when it runs as
        its own user, C{RLIMIT_NPROC}.  Both count threads: Node 20 needs 7.
    @ivar file_size_mb: C{RLIMIT_FSIZE} in MiB (SIGXFSZ, or EFBIG where the
        signal is ignored, as Python does).
    @ivar open_files: C{RLIMIT_NOFILE}; unchanged if L{None}.
    """

    cpu_seconds: int | None = 300
    memory_mb: int | None = 512
    processes: int | None = 10
    file_size_mb: int | None = 10
    open_files: int | None = None


@dataclass(frozen=True)
class SandboxPolicy:
    """
    A service's sandbox, read by L{policy_from_config}.

    @ivar level: C{"high"}, C{"medium"} or C{"none"}.
    @ivar limits: The resource limits, or L{None} for none (always L{None}
        at level C{none}).
    @ivar env_passthrough: Gateway variables passed on by name.
    @ivar user: C{user} as configured (for messages), or C{""}.
    @ivar uid: The uid to run the command as, or L{None} to keep the gateway's.
    @ivar gid: The gid to run it as (set whenever C{uid} is).
    @ivar working_dir: A fixed working directory, or C{""} for a private one per child.
    """

    level: Level = "high"
    limits: ResourceLimits | None = field(default_factory=ResourceLimits)
    env_passthrough: tuple[str, ...] = ()
    user: str = ""
    uid: int | None = None
    gid: int | None = None
    working_dir: str = ""


class SandboxError(OSError):
    """
    The child cannot be started as its sandbox requires (an L{OSError}, so a
    spawn's C{except OSError} reports it with C{strerror}).
    """


_LIMIT_KEYS = ("cpu_seconds", "memory_mb", "processes", "file_size_mb", "open_files")
_POLICY_KEYS = (
    "enabled",
    "restricted_env",
    "resource_limits",
    "level",
    "env_passthrough",
    "user",
    "group",
    "working_dir",
)


def _substitute(text: str, environ: Mapping[str, str]) -> str:
    from .config import substitute

    return substitute(text, environ)


def _config_error(message: str) -> Exception:
    """
    @return: A L{mcpgateway.config.ConfigError} (imported here: config imports this module).
    """
    from .config import ConfigError

    return ConfigError(message)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    return {dict: "an object", list: "a list", str: "a string", float: "a number", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _text(value: Any, path: str, environ: Mapping[str, str]) -> str:
    if not isinstance(value, str):
        raise _config_error(f"{path}: expected a string, got {_kind(value)}")
    return _substitute(value, environ)


def _flag(value: Any, path: str, environ: Mapping[str, str]) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = _substitute(value, environ).strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
    raise _config_error(f"{path}: expected true or false, got {value!r}")


def _limit(value: Any, path: str, environ: Mapping[str, str]) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = _substitute(value, environ).strip()
        if not re.fullmatch(r"\+?\d+", text):
            raise _config_error(f"{path}: expected a positive integer or null, got {text!r}")
        number = int(text)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise _config_error(f"{path}: expected a positive integer or null, got {_kind(value)}")
    if number <= 0:
        raise _config_error(f"{path}: must be greater than zero (null for unlimited), got {number}")
    return number


def _limits(value: Any, path: str, environ: Mapping[str, str]) -> ResourceLimits | None:
    if isinstance(value, Mapping):
        values: dict[str, int | None] = {}
        for key, item in value.items():
            if key not in _LIMIT_KEYS:
                raise _config_error(f"{path}.{key}: unknown key (known keys: {', '.join(sorted(_LIMIT_KEYS))})")
            values[key] = _limit(item, f"{path}.{key}", environ)
        return ResourceLimits(**values)
    return ResourceLimits() if _flag(value, path, environ) else None


def _passthrough(value: Any, path: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise _config_error(f"{path}: expected a list of variable names, got {_kind(value)}")
    names: list[str] = []
    for index, item in enumerate(items):
        where = f"{path}[{index}]" if isinstance(value, list) else path
        name = _text(item, where, environ).strip()
        if not _ENV_NAME.fullmatch(name):
            raise _config_error(f"{where}: not an environment variable name: {name!r}")
        if _always_removed(name):
            raise _config_error(f"{where}: {name} is never passed to a child (it is always removed)")
        names.append(name)
    return tuple(names)


def _resolve_user(text: str, path: str) -> tuple[int, int | None]:
    """
    @return: The uid and the user's primary gid (L{None} for a bare numeric uid).
    """
    try:
        entry = pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)
    except KeyError:
        if text.isdigit():
            return int(text), None
        raise _config_error(f"{path}: no such user: {text!r}") from None
    return entry.pw_uid, entry.pw_gid


def _resolve_group(text: str, path: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise _config_error(f"{path}: no such group: {text!r}") from None


def policy_from_config(raw: Mapping[str, Any], path: str, environ: Mapping[str, str] | None = None) -> SandboxPolicy:
    """
    Read a service's C{sandbox} (or C{sandbox_config}) object.

    Keys: the seeds' C{enabled}, C{restricted_env}, C{resource_limits} (a
    boolean, or an object of C{cpu_seconds}, C{memory_mb}, C{processes},
    C{file_size_mb}, C{open_files}: a positive integer or C{null} for
    unlimited; missing ones take their defaults 300 s, 512 MiB, 10, 10 MiB,
    unchanged) and C{working_dir}; and C{level} (C{high}, C{medium} or
    C{none}: overrides what C{enabled}/C{restricted_env} imply),
    C{env_passthrough} (names), C{user} and C{group} (a name or a number;
    C{group} defaults to the user's primary group).

    @param raw: The decoded JSON object.
    @param path: Its key path, e.g. C{services.todo.sandbox}, for messages.
    @param environ: Variables for C{${VAR|default}}; C{os.environ} if L{None}.
    @return: The policy.
    @raise mcpgateway.config.ConfigError: Naming the key path that is wrong.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    if not isinstance(raw, Mapping):
        raise _config_error(f"{path}: expected an object, got {_kind(raw)}")
    for key in raw:
        if key not in _POLICY_KEYS:
            known = ", ".join(sorted(_POLICY_KEYS))
            raise _config_error(f"{path}.{key}: unknown key (known keys: {known})")
    where = {key: f"{path}.{key}" for key in _POLICY_KEYS}
    enabled = _flag(raw.get("enabled", True), where["enabled"], env)
    restricted = _flag(raw.get("restricted_env", True), where["restricted_env"], env)
    level: Level = "none" if not enabled else "high" if restricted else "medium"
    if "level" in raw:
        named = _text(raw["level"], where["level"], env).strip().lower()
        if named not in _LEVELS:
            raise _config_error(f"{where['level']}: expected high, medium or none, got {named!r}")
        level = named
    limits = _limits(raw.get("resource_limits", True), where["resource_limits"], env)
    passthrough = _passthrough(raw.get("env_passthrough", []), where["env_passthrough"], env)
    user = _text(raw.get("user", ""), where["user"], env).strip()
    group = _text(raw.get("group", ""), where["group"], env).strip()
    uid: int | None = None
    gid: int | None = None
    if group and not user:
        raise _config_error(f"{where['group']}: needs user")
    if user:
        uid, gid = _resolve_user(user, where["user"])
        if group:
            gid = _resolve_group(group, where["group"])
        elif gid is None:
            raise _config_error(f"{where['user']}: uid {uid} has no passwd entry: give group too")
    return SandboxPolicy(
        level=level,
        limits=None if level == "none" else limits,
        env_passthrough=passthrough,
        user=user,
        uid=uid,
        gid=gid,
        working_dir=_text(raw.get("working_dir", ""), where["working_dir"], env),
    )


# -- what this machine can do -------------------------------------------------

_CAP_SETGID, _CAP_SETUID, _CAP_SETPCAP = 6, 7, 8


@dataclass(frozen=True)
class _CgroupBase:
    """
    Where per-child cgroups are made: C{directory}/C{<service>-<pid>-<n>}.
    """

    version: str
    directory: str


@dataclass(frozen=True)
class _Machine:
    binaries: Mapping[str, str]
    cgroup: _CgroupBase | None
    cgroup_reason: str
    root: bool
    can_setid: bool
    can_drop_caps: bool


def _effective_caps() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def _find_binaries() -> dict[str, str]:
    """
    @return: The chain's helpers found on the gateway's C{PATH} (and the usual places).
    """
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/bin", "/usr/sbin", "/sbin"])
    found: dict[str, str] = {}
    for name in ("setsid", "prlimit", "setpriv", "sh"):
        where = shutil.which(name, path=search)
        if where:
            found[name] = os.path.abspath(where)
    return found


def _unescape(text: str) -> str:
    """
    @return: A mountinfo field with its octal escapes (C{\\040} for a space) decoded.
    """
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)


def _mounts() -> list[tuple[str, str, str, str]]:
    """
    @return: C{(mount root, mount point, type, super options)} of each cgroup mount.
    """
    result = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            result.append((_unescape(fields[3]), _unescape(fields[4]), tail[0], tail[2]))
    return result


def _own_cgroups() -> dict[str, str]:
    """
    @return: The gateway's cgroup per hierarchy: C{""} for v2, controller names for v1.
    """
    own: dict[str, str] = {}
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as handle:
            for line in handle.read().splitlines():
                _, controllers, where = line.split(":", 2)
                for name in controllers.split(",") if controllers else [""]:
                    own[name] = where
    except (OSError, ValueError):
        pass
    return own


def _inside(mount_root: str, mount_point: str, cgroup: str) -> str | None:
    relative = os.path.relpath(cgroup, mount_root) if mount_root != "/" else cgroup.lstrip("/")
    if relative.startswith(".."):
        return None
    directory = os.path.normpath(os.path.join(mount_point, relative))
    return directory if os.path.isdir(directory) else None


def _read(path: str) -> str:
    with open(path, encoding="ascii") as handle:
        return handle.read()


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as handle:
        handle.write(text)


def _try_base(version: str, directory: str) -> _CgroupBase:
    """
    Make (or reuse) C{directory/mcpgateway} and check a child cgroup gets C{pids.max}.

    @param directory: The gateway's cgroup (or its delegated parent).

    @raise OSError: If it cannot.
    """
    base = os.path.join(directory, "mcpgateway")
    if version == "v2":
        if "pids" not in _read(os.path.join(directory, "cgroup.controllers")).split():
            raise OSError(errno.ENOTSUP, "the pids controller is not available in this cgroup")
        if "pids" not in _read(os.path.join(directory, "cgroup.subtree_control")).split():
            # EBUSY when the gateway's own cgroup holds processes (the
            # "no internal processes" rule): then it must be delegated a leaf.
            _write(os.path.join(directory, "cgroup.subtree_control"), "+pids")
    os.makedirs(base, mode=0o755, exist_ok=True)
    if version == "v2" and "pids" not in _read(os.path.join(base, "cgroup.subtree_control")).split():
        _write(os.path.join(base, "cgroup.subtree_control"), "+pids")
    probe = os.path.join(base, f"probe-{os.getpid()}")
    os.makedirs(probe, exist_ok=True)
    try:
        _write(os.path.join(probe, "pids.max"), "1")
    finally:
        os.rmdir(probe)
    _sweep(base)
    return _CgroupBase(version, base)


_CHILD_DIR = re.compile(r".+-(\d+)-\d+")


def _sweep(base: str) -> None:
    """
    Remove the empty cgroups left by gateways that are gone.
    """
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        match = _CHILD_DIR.fullmatch(name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(base, name))
        except OSError:
            pass


def _delegated(directory: str) -> bool:
    """
    @return: Whether systemd marked C{directory} as delegated (C{Delegate=}, systemd 251+).
    """
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(directory, name) == b"1":
                return True
        except OSError:
            continue
    return False


def _find_cgroup() -> tuple[_CgroupBase | None, str]:
    """
    @return: Where children's cgroups go (v2 preferred, then the v1 pids
        hierarchy), or L{None} and why not.
    """
    own = _own_cgroups()
    reasons: list[str] = []
    mounts = _mounts()
    for version in ("v2", "v1"):
        for mount_root, mount_point, kind, options in mounts:
            if version == "v2" and kind == "cgroup2":
                cgroup = own.get("")
            elif version == "v1" and kind == "cgroup" and "pids" in options.split(","):
                cgroup = own.get("pids")
            else:
                continue
            directory = _inside(mount_root, mount_point, cgroup) if cgroup is not None else None
            if directory is None:
                reasons.append(f"{version} at {mount_point}: the gateway's cgroup is not under it")
                continue
            candidates = [directory]
            parent = os.path.dirname(directory)
            if version == "v2" and directory != os.path.normpath(mount_point) and _delegated(parent):
                # systemd's DelegateSubgroup=: the gateway sits in a leaf of its delegated cgroup.
                candidates.append(parent)
            for candidate in candidates:
                try:
                    return _try_base(version, candidate), ""
                except OSError as error:
                    reasons.append(f"{version} at {candidate}: {error.strerror or error}")
    if not mounts:
        reasons.append("no cgroup file system is mounted")
    return None, "; ".join(reasons)


@functools.lru_cache(maxsize=1)
def _machine() -> _Machine:
    """
    Probe once what this machine supports (cheap: a few files under /proc and /sys).
    """
    caps = _effective_caps()
    cgroup, reason = _find_cgroup()
    return _Machine(
        binaries=_find_binaries(),
        cgroup=cgroup,
        cgroup_reason=reason,
        root=os.geteuid() == 0,
        can_setid=bool(caps & (1 << _CAP_SETUID) and caps & (1 << _CAP_SETGID)),
        can_drop_caps=os.geteuid() == 0 and bool(caps & (1 << _CAP_SETPCAP)),
    )


def _util_linux(machine: _Machine, cgroup: bool) -> bool:
    needed = ("setsid", "prlimit", "setpriv", "sh") if cgroup else ("setsid", "prlimit", "setpriv")
    return all(name in machine.binaries for name in needed)


def sandbox_capabilities() -> dict[str, bool | str]:
    """
    What the sandbox enforces on this machine (probed once, then cached).

    @return: C{exec_chain} (C{"util-linux"} or C{"python"}: the shim, used
        when a util-linux helper is missing), C{process_group},
        C{pdeathsig}, C{resource_limits}, C{no_new_privs} (always true);
        C{cgroup} (C{"v2"}, C{"v1"} or C{""}), C{cgroup_dir}, and
        C{cgroup_unavailable} (why not); C{root}; C{privilege_drop}
        (C{user}/C{group} can be honoured); C{capability_drop} (root
        children at C{high}/C{medium} lose every capability);
        C{process_limit}: C{"cgroup"} (every child's tree is bounded),
        C{"cgroup+user"} (and C{RLIMIT_NPROC} too for services with a
        C{user}), C{"user"} (only services with a C{user} are bounded) or
        C{"none"}.
    """
    machine = _machine()
    if machine.cgroup is not None:
        process_limit = "cgroup+user" if machine.can_setid else "cgroup"
    else:
        process_limit = "user" if machine.can_setid else "none"
    return {
        "exec_chain": "util-linux" if _util_linux(machine, machine.cgroup is not None) else "python",
        "process_group": True,
        "pdeathsig": True,
        "resource_limits": True,
        "no_new_privs": True,
        "cgroup": machine.cgroup.version if machine.cgroup else "",
        "cgroup_dir": machine.cgroup.directory if machine.cgroup else "",
        "cgroup_unavailable": machine.cgroup_reason if machine.cgroup is None else "",
        "root": machine.root,
        "privilege_drop": machine.can_setid,
        "capability_drop": machine.can_drop_caps,
        "process_limit": process_limit,
    }


# -- the launch ---------------------------------------------------------------

_counter = itertools.count(1)
_pending: set[str] = set()


@dataclass(eq=False)
class Launch:
    """
    How to spawn one sandboxed child:
    C{reactor.spawnProcess(protocol, launch.executable, launch.args, env=launch.env, path=launch.path)}.

    Do not pass C{uid}/C{gid} to C{spawnProcess}: the chain drops privileges
    itself, after joining the cgroup (which needs the gateway's).

    @ivar executable: The program to spawn (the first of the chain).
    @ivar args: Its argv, the chain and then the command.
    @ivar env: The child's complete environment.
    @ivar path: Its working directory (its private one).
    @ivar uid: The uid the command runs as, or L{None} for the gateway's.
    @ivar gid: The gid the command runs as, or L{None} for the gateway's.
    @ivar cgroup: The child's own cgroup directory, or L{None}.
    """

    executable: str
    args: list[str]
    env: dict[str, str]
    path: str
    uid: int | None = None
    gid: int | None = None
    cgroup: str | None = None

    def cleanup(self) -> bool:
        """
        Remove the child's cgroup; call once the child has exited.  Whatever
        of its tree is still in the cgroup (a grandchild that left the process
        group) is sent SIGKILL, and the directory is removed by a later call
        (or the next L{build_launch}) once the kernel has let it go.  Only
        cheap system calls: safe on the reactor thread.  Idempotent.

        @return: Whether the cgroup is gone (or there never was one).
        """
        _retry_pending()
        if self.cgroup is None:
            return True
        if _remove_cgroup(self.cgroup):
            _pending.discard(self.cgroup)
            self.cgroup = None
            return True
        _pending.add(self.cgroup)
        return False


def _remove_cgroup(directory: str) -> bool:
    try:
        os.rmdir(directory)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        pass
    try:
        _write(os.path.join(directory, "cgroup.kill"), "1")  # v2, Linux 5.14+: atomic
    except OSError:
        try:
            members = _read(os.path.join(directory, "cgroup.procs")).split()
        except OSError:
            members = []
        for pid in members:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    try:
        os.rmdir(directory)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _retry_pending() -> None:
    for directory in list(_pending):
        if _remove_cgroup(directory):
            _pending.discard(directory)


def _environment(
    policy: SandboxPolicy,
    home: str,
    extra_env: Mapping[str, str],
    gateway_env: Mapping[str, str],
    secrets: Collection[str],
) -> dict[str, str]:
    env: dict[str, str]
    if policy.level == "high":
        env = {
            "PATH": gateway_env.get("PATH") or _DEFAULT_PATH,
            "LANG": gateway_env.get("LANG") or _DEFAULT_LANG,
            "HOME": home,
            "TMPDIR": home,
            "TMP": home,
            "TEMP": home,
        }
    else:
        env = {name: value for name, value in gateway_env.items() if name.upper() not in NOT_INHERITED}
    for name in policy.env_passthrough:
        if name in gateway_env:
            env[name] = gateway_env[name]
    env.update(extra_env)
    hidden = {secret for secret in secrets if secret}
    return {
        name: value
        for name, value in env.items()
        if not _always_removed(name) and value not in hidden and "=" not in name and "\0" not in name + value
    }


_warned: set[tuple[str, str]] = set()


def _warn_dropped(service: str, extra_env: Mapping[str, str], env: Mapping[str, str]) -> None:
    """
    Say once per service and name that a configured C{env} variable is not passed on.
    """
    for name in extra_env:
        if name not in env and (service, name) not in _warned:
            _warned.add((service, name))
            log.warn(
                "{service}: env variable {name} is never passed to a child (the sandbox always removes it)",
                service=service,
                name=name,
            )


def _ids(policy: SandboxPolicy, machine: _Machine) -> tuple[int | None, int | None]:
    """
    @return: The uid and gid to switch to, or L{None}s to keep the gateway's.
    @raise SandboxError: If the gateway may not switch to them.
    """
    if policy.uid is None or policy.gid is None:
        return None, None
    if policy.uid == os.geteuid() and policy.gid == os.getegid():
        return None, None
    if not machine.can_setid:
        raise SandboxError(
            errno.EPERM, f"cannot run as user {policy.user!r}: the gateway is not root (it lacks CAP_SETUID/CAP_SETGID)"
        )
    return policy.uid, policy.gid


def _may_use(directory: str, uid: int, gid: int, need: int) -> bool:
    """
    @param need: The permission bits wanted (1: search, 7: everything).
    @return: Whether C{uid} (in group C{gid} only) has them on C{directory}.
    """
    info = os.stat(directory)
    if info.st_uid == uid:
        bits = info.st_mode >> 6
    elif info.st_gid == gid:
        bits = info.st_mode >> 3
    else:
        bits = info.st_mode
    if bits & need == need:
        return True
    try:
        return "system.posix_acl_access" in os.listxattr(directory)  # an ACL may allow it: trust the admin
    except OSError:
        return False


def _prepare_home(workdir: str, private: bool, uid: int, gid: int) -> None:
    """
    Give the private directory to the child's user, and check that it can
    reach it by its absolute path (C{HOME}, C{TMPDIR}).

    Only a directory that looks private (owned by the gateway, closed to
    everyone else: what C{mkdtemp} makes) is handed over; the directories
    above it are never changed.

    @raise SandboxError: If the user could not use it.
    """
    real = os.path.realpath(workdir)
    current = "/"
    for part in [p for p in real.split("/") if p]:
        if not _may_use(current, uid, gid, 1):
            raise SandboxError(
                errno.EACCES,
                f"user {uid} cannot reach {workdir}: {current} is closed to it (make it searchable: chmod o+x)",
            )
        current = os.path.join(current, part)
    info = os.stat(real)
    if private and real != "/" and info.st_uid == os.geteuid() and not info.st_mode & 0o077:
        os.chown(real, uid, gid)
    if not _may_use(real, uid, gid, 7 if private else 1):
        raise SandboxError(errno.EACCES, f"user {uid} cannot use its working directory {workdir}")


def _make_cgroup(base: _CgroupBase, service: str, processes: int) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", service)[:64] or "service"
    directory = os.path.join(base.directory, f"{name}-{os.getpid()}-{next(_counter)}")
    try:
        os.mkdir(directory, 0o755)
        _write(os.path.join(directory, "pids.max"), str(processes))
    except OSError as error:
        with contextlib.suppress(OSError):
            os.rmdir(directory)
        raise SandboxError(
            error.errno or errno.EIO, f"cannot make the child's cgroup {directory}: {error.strerror or error}"
        ) from None
    return directory


_MIB = 1024 * 1024
_JOIN_CGROUP = 'echo $$ >"$0" || { echo "mcpgateway: cannot join the cgroup $0" >&2; exit 126; }; '
_SHIM = """
import ctypes, json, os, resource, sys
parent = os.getppid()
# The environment as given: Python may add LC_CTYPE to os.environ (PEP 538).
with open("/proc/self/environ", "rb") as f:
    env = dict(e.split(b"=", 1) for e in f.read().split(b"\\0") if b"=" in e)
spec = json.loads(sys.argv[1])
if spec["cgroup"]:
    with open(spec["cgroup"], "w") as f:
        f.write(str(os.getpid()))
os.setsid()
for name, value in spec["rlimits"]:
    resource.setrlimit(getattr(resource, name), (value, value))
libc = ctypes.CDLL(None, use_errno=True)
if spec["uid"] is not None:
    os.setgroups([])
    os.setresgid(spec["gid"], spec["gid"], spec["gid"])
    os.setresuid(spec["uid"], spec["uid"], spec["uid"])
if spec["drop_caps"]:
    for cap in range(64):
        if libc.prctl(24, cap, 0, 0, 0) and ctypes.get_errno() == 22:
            break
if spec["nnp"] and libc.prctl(38, 1, 0, 0, 0):
    sys.exit("mcpgateway: PR_SET_NO_NEW_PRIVS failed")
if libc.prctl(1, 9, 0, 0, 0):
    sys.exit("mcpgateway: PR_SET_PDEATHSIG failed")
if os.getppid() != parent:
    sys.exit(137)
os.execvpe(sys.argv[2], sys.argv[2:], env)
"""


def build_launch(
    policy: SandboxPolicy,
    command: tuple[str, ...],
    *,
    service: str,
    workdir: str,
    extra_env: Mapping[str, str],
    gateway_env: Mapping[str, str],
    secrets: Collection[str],
) -> Launch:
    """
    Say how to start C{command} under C{policy}.

    Makes the child's cgroup (if the machine has one and a process limit is
    set) and, when it runs as another user, gives it the private directory.
    Cheap system calls only; call it on the reactor thread, right before
    spawning, and call L{Launch.cleanup} once the child has exited (also when
    the spawn fails).

    @param policy: The service's sandbox.
    @param command: The program and its arguments.
    @param service: The service's name (names its cgroup).
    @param workdir: The child's private directory (or the configured C{working_dir}).
    @param extra_env: The service's C{env}.
    @param gateway_env: The gateway's environment (C{os.environ}).
    @param secrets: Values no variable may carry (the auth password and token).
    @return: The L{Launch}.
    @raise SandboxError: If the sandbox cannot be set up (an L{OSError}).
    """
    if not command or not command[0]:
        raise ValueError("an empty command")
    _retry_pending()
    machine = _machine()
    home = os.path.abspath(workdir)
    uid, gid = _ids(policy, machine)
    if uid is not None and gid is not None:
        private = not policy.working_dir or os.path.abspath(policy.working_dir) != home
        _prepare_home(home, private, uid, gid)
    env = _environment(policy, home, extra_env, gateway_env, secrets)
    _warn_dropped(service, extra_env, env)
    limits = policy.limits if policy.level != "none" else None
    rlimits: list[tuple[str, str, int]] = []
    cgroup: str | None = None
    if limits is not None:
        for option, name, value in (
            ("cpu", "RLIMIT_CPU", limits.cpu_seconds),
            ("data", "RLIMIT_DATA", None if limits.memory_mb is None else limits.memory_mb * _MIB),
            ("fsize", "RLIMIT_FSIZE", None if limits.file_size_mb is None else limits.file_size_mb * _MIB),
            ("nofile", "RLIMIT_NOFILE", limits.open_files),
            # Counts every process of the real uid and never binds root: only
            # meaningful for a child that runs as its own user.
            ("nproc", "RLIMIT_NPROC", limits.processes if uid not in (None, 0) else None),
        ):
            if value is not None:
                rlimits.append((option, name, value))
        if limits.processes is not None and machine.cgroup is not None:
            cgroup = _make_cgroup(machine.cgroup, service, limits.processes)
    confined = policy.level != "none"
    drop_caps = confined and machine.can_drop_caps and uid in (None, 0)
    procs = os.path.join(cgroup, "cgroup.procs") if cgroup else None
    if _util_linux(machine, cgroup is not None):
        bins = machine.binaries
        args = [bins["setsid"], "--"]
        if procs:
            # The shell exports PWD: take it back unless the child is meant to have it.
            script = _JOIN_CGROUP + ('exec "$@"' if "PWD" in env else 'unset PWD; exec "$@"')
            args += [bins["sh"], "-c", script, procs]
        if rlimits:
            args += [bins["prlimit"], *(f"--{option}={value}" for option, _, value in rlimits), "--"]
        args += [bins["setpriv"], "--pdeathsig", "KILL"]
        if confined:
            args.append("--nnp")
        if uid is not None:
            args += ["--reuid", str(uid), "--regid", str(gid), "--clear-groups"]
        if drop_caps:
            args += ["--inh-caps", "-all", "--bounding-set", "-all"]
        args += ["--", *command]
    else:
        spec = {
            "cgroup": procs,
            "rlimits": [[name, value] for _, name, value in rlimits],
            "uid": uid,
            "gid": gid,
            "nnp": confined,
            "drop_caps": drop_caps,
        }
        args = [sys.executable, "-I", "-S", "-c", _SHIM, json.dumps(spec), *command]
    return Launch(args[0], args, env, home, uid, gid, cgroup)
