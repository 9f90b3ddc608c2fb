"""
A service's C{sandbox} block: the policy, read from the configuration.

Only data and its checks live here; L{mcpgateway.children.sandbox} turns a
L{SandboxPolicy} into the chain of programs that starts a child under it.

The seeds' keys decide the level: C{enabled: false} is C{none},
C{restricted_env: false} is C{medium}, anything else C{high}; C{level}
overrides them; C{resource_limits: false} turns the limits off.  At every
level the variables of L{ALWAYS_REMOVED} and L{ALWAYS_REMOVED_PREFIXES} are
removed from a child's environment, whatever their source, and
L{NOT_INHERITED} are not taken from the gateway's.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mcpgateway.config.values import ConfigError, Reader, boolean, kind, section, string, substitute

__all__ = [
    "ALWAYS_REMOVED",
    "ALWAYS_REMOVED_PREFIXES",
    "NOT_INHERITED",
    "Level",
    "ResourceLimits",
    "SandboxPolicy",
    "always_removed",
    "policy_from_config",
]

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

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def always_removed(name: str) -> bool:
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
    @ivar processes: How many processes the child's tree may run (the
        seeds' meaning).  The kernel cannot count processes alone: its limits
        (a cgroup's C{pids.max}, C{RLIMIT_NPROC}) count I{tasks}, processes
        and their threads together, and a Node or Python server runs a dozen
        threads or more, growing with the cores.  So the limit enforced is
        L{task_limit}: C{processes} times L{threads_per_process}.
    @ivar tasks: The task limit itself (C{pids.max}, and C{RLIMIT_NPROC}
        when the child runs as its own user), overriding the product; L{None}
        (the default, or C{null}) derives it from C{processes}.
    @ivar file_size_mb: C{RLIMIT_FSIZE} in MiB (SIGXFSZ, or EFBIG where the
        signal is ignored, as Python does).
    @ivar open_files: C{RLIMIT_NOFILE}; unchanged if L{None}.
    """

    cpu_seconds: int | None = 300
    memory_mb: int | None = 512
    processes: int | None = 10
    file_size_mb: int | None = 256
    open_files: int | None = None
    tasks: int | None = None

    @staticmethod
    def threads_per_process() -> int:
        """
        @return: The threads each of C{processes} may run: 64, or 8 per CPU
            on a machine with more than 8 (Node's V8 and libuv pools, and
            the thread pools of Python servers, grow with the cores).
        """
        return max(64, 8 * (os.cpu_count() or 1))

    def task_limit(self) -> int | None:
        """
        @return: The tasks (processes and threads) the child's tree may run,
            or L{None} for no limit.
        """
        if self.tasks is not None:
            return self.tasks
        if self.processes is None:
            return None
        return self.processes * self.threads_per_process()

    def task_limit_key(self) -> str:
        """
        @return: The C{resource_limits} key that sets L{task_limit}.
        """
        return "tasks" if self.tasks is not None else "processes"


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


_LIMIT_KEYS = ("cpu_seconds", "memory_mb", "processes", "tasks", "file_size_mb", "open_files")


def _limit(value: Any, path: str, environ: Mapping[str, str]) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = substitute(value, environ).strip()
        if not re.fullmatch(r"\+?\d+", text):
            raise ConfigError(f"{path}: expected a positive integer or null, got {text!r}")
        number = int(text)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise ConfigError(f"{path}: expected a positive integer or null, got {kind(value)}")
    if number <= 0:
        raise ConfigError(f"{path}: must be greater than zero (null for unlimited), got {number}")
    return number


def _limits(value: Any, path: str, environ: Mapping[str, str]) -> ResourceLimits | None:
    if isinstance(value, dict):
        return ResourceLimits(**section(value, path, environ, dict.fromkeys(_LIMIT_KEYS, _limit)))
    return ResourceLimits() if boolean(value, path, environ) else None


def _passthrough(value: Any, path: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ConfigError(f"{path}: expected a list of variable names, got {kind(value)}")
    names: list[str] = []
    for index, item in enumerate(items):
        where = f"{path}[{index}]" if isinstance(value, list) else path
        name = string(item, where, environ).strip()
        if not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"{where}: not an environment variable name: {name!r}")
        if always_removed(name):
            raise ConfigError(f"{where}: {name} is never passed to a child (it is always removed)")
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
        raise ConfigError(f"{path}: no such user: {text!r}") from None
    return entry.pw_uid, entry.pw_gid


def _resolve_group(text: str, path: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ConfigError(f"{path}: no such group: {text!r}") from None


_POLICY: dict[str, Reader] = {
    "enabled": boolean,
    "restricted_env": boolean,
    "resource_limits": _limits,
    "level": string,
    "env_passthrough": _passthrough,
    "user": string,
    "group": string,
    "working_dir": string,
}


def policy_from_config(raw: Any, path: str, environ: Mapping[str, str] | None = None) -> SandboxPolicy:
    """
    Read a service's C{sandbox} (or C{sandbox_config}) object.

    Keys: the seeds' C{enabled}, C{restricted_env}, C{resource_limits} (a
    boolean, or an object of C{cpu_seconds}, C{memory_mb}, C{processes},
    C{tasks}, C{file_size_mb}, C{open_files}: a positive integer or C{null}
    for unlimited; missing ones take their defaults 300 s, 512 MiB, 10
    processes, C{processes} x L{ResourceLimits.threads_per_process} tasks,
    256 MiB, unchanged) and C{working_dir}; and C{level} (C{high}, C{medium} or
    C{none}: overrides what C{enabled}/C{restricted_env} imply),
    C{env_passthrough} (names), C{user} and C{group} (a name or a number;
    C{group} defaults to the user's primary group).

    @param raw: The decoded JSON object.
    @param path: Its key path, e.g. C{services.todo.sandbox}, for messages.
    @param environ: Variables for C{${VAR|default}}; C{os.environ} if L{None}.
    @return: The policy.
    @raise ConfigError: Naming the key path that is wrong.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    values = section(raw, path, env, _POLICY)
    enabled = values.get("enabled", True)
    level: Level = "none" if not enabled else "high" if values.get("restricted_env", True) else "medium"
    if "level" in values:
        named = values["level"].strip().lower()
        if named not in _LEVELS:
            raise ConfigError(f"{path}.level: expected high, medium or none, got {named!r}")
        level = named
    limits = values.get("resource_limits", ResourceLimits())
    user = values.get("user", "").strip()
    group = values.get("group", "").strip()
    uid: int | None = None
    gid: int | None = None
    if group and not user:
        raise ConfigError(f"{path}.group: needs user")
    if user:
        uid, gid = _resolve_user(user, f"{path}.user")
        if group:
            gid = _resolve_group(group, f"{path}.group")
        elif gid is None:
            raise ConfigError(f"{path}.user: uid {uid} has no passwd entry: give group too")
    return SandboxPolicy(
        level=level,
        limits=None if level == "none" else limits,
        env_passthrough=values.get("env_passthrough", ()),
        user=user,
        uid=uid,
        gid=gid,
        working_dir=values.get("working_dir", ""),
    )
