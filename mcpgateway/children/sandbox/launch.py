"""
The child-process sandbox: how an MCP server is started so that it cannot
outlive the gateway, exhaust the host, or read the gateway's secrets.

The level comes from the service's C{sandbox} block
(L{mcpgateway.config.sandbox}):

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
C{TMP} and C{TEMP} (the child's private directory), the TLS trust variables
(L{TRUST_VARIABLES}) when the gateway has them, the package managers' cache
variables (L{launcher_caches}: the service's cache directory, kept between
its children), the service's C{env} and the C{env_passthrough} variables.  At every level: L{ALWAYS_REMOVED} and the
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
C{prlimit} or C{setpriv} one Python shim (C{python -I -S .../shim.py ...},
L{mcpgateway.children.sandbox.shim}; ~25 ms instead of ~3) does all of it.

The task limit (C{processes} x threads, L{ResourceLimits.task_limit}) is
enforced twice where the machine allows it: a cgroup with C{pids.max} (v2 if
the C{pids} controller can be enabled below the gateway's cgroup, else the v1
C{pids} hierarchy), and C{RLIMIT_NPROC}, which counts every process of the
child's real uid and never binds root, so it is only set when the child runs
as its own C{user}.  Both count threads.
L{sandbox_capabilities} says what this machine enforces.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from mcpgateway.children.sandbox.cgroup import make_cgroup, release_cgroup, retry_pending
from mcpgateway.children.sandbox.machine import Machine, probe, util_linux
from mcpgateway.config.sandbox import NOT_INHERITED, SandboxPolicy, always_removed
from mcpgateway.config.values import CHILD_DIR
from mcpgateway.observe.logs import logger

__all__ = ["SHIM", "TRUST_VARIABLES", "Launch", "SandboxError", "build_launch", "launcher_caches"]

log = logger("mcpgateway.sandbox")

#: Where the machine's TLS trust anchors are: passed on at level high too
#: (they hold no secret), so a server that downloads (npx, uvx) or calls out
#: trusts what the gateway's host trusts.
TRUST_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE")

_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_DEFAULT_LANG = "C.UTF-8"


class SandboxError(OSError):
    """
    The child cannot be started as its sandbox requires (an L{OSError}, so a
    spawn's C{except OSError} reports it with C{strerror}).
    """


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
        if self.cgroup is None:
            retry_pending()
            return True
        if release_cgroup(self.cgroup):
            self.cgroup = None
            return True
        return False


def launcher_caches(cache_dir: str) -> dict[str, str]:
    """
    @param cache_dir: The service's cache directory (kept between its children).
    @return: The variables that point the package managers' caches there:
        C{npx} (npm), C{uvx} (uv), pip, and anything following XDG; that
        keep npm from checking for its own updates; and that make uv trust
        the machine's certificate store, as npm, pip and curl do.
    """
    return {
        "UV_SYSTEM_CERTS": "1",
        "XDG_CACHE_HOME": cache_dir,
        "npm_config_cache": os.path.join(cache_dir, "npm"),
        "npm_config_update_notifier": "false",
        "NO_UPDATE_NOTIFIER": "1",
        "UV_CACHE_DIR": os.path.join(cache_dir, "uv"),
        "PIP_CACHE_DIR": os.path.join(cache_dir, "pip"),
    }


def _environment(
    policy: SandboxPolicy,
    home: str,
    extra_env: Mapping[str, str],
    gateway_env: Mapping[str, str],
    secrets: Collection[str],
    cache_dir: str | None,
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
        env.update({name: gateway_env[name] for name in TRUST_VARIABLES if gateway_env.get(name)})
    else:
        env = {name: value for name, value in gateway_env.items() if name.upper() not in NOT_INHERITED}
    if cache_dir and policy.level != "none":
        env.update(launcher_caches(cache_dir))
    for name in policy.env_passthrough:
        if name in gateway_env:
            env[name] = gateway_env[name]
    env.update({name: value.replace(CHILD_DIR, home) for name, value in extra_env.items()})
    hidden = {secret for secret in secrets if secret}
    return {
        name: value
        for name, value in env.items()
        if not always_removed(name) and value not in hidden and "=" not in name and "\0" not in name + value
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


def _ids(policy: SandboxPolicy, machine: Machine) -> tuple[int | None, int | None]:
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


_MIB = 1024 * 1024
_JOIN_CGROUP = 'echo $$ >"$0" || { echo "mcpgateway: cannot join the cgroup $0" >&2; exit 126; }; '
#: The Python shim that replaces the util-linux chain (run with C{-I -S}: no site, no user paths).
SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shim.py")


def _prlimit(option: str, soft: int, hard: int) -> str:
    return f"--{option}={soft}" if soft == hard else f"--{option}={soft}:{hard}"


def build_launch(
    policy: SandboxPolicy,
    command: tuple[str, ...],
    *,
    service: str,
    workdir: str,
    extra_env: Mapping[str, str],
    gateway_env: Mapping[str, str],
    secrets: Collection[str],
    cache_dir: str | None = None,
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
    @param cache_dir: The service's cache directory for C{npx}, C{uvx} and
        pip (L{launcher_caches}; not at level C{none}), or L{None}.
    @return: The L{Launch}.
    @raise SandboxError: If the sandbox cannot be set up (an L{OSError}).
    """
    if not command or not command[0]:
        raise ValueError("an empty command")
    retry_pending()
    machine = probe()
    home = os.path.abspath(workdir)
    uid, gid = _ids(policy, machine)
    if uid is not None and gid is not None:
        private = not policy.working_dir or os.path.abspath(policy.working_dir) != home
        _prepare_home(home, private, uid, gid)
    env = _environment(policy, home, extra_env, gateway_env, secrets, cache_dir)
    _warn_dropped(service, extra_env, env)
    limits = policy.limits if policy.level != "none" else None
    rlimits: list[tuple[str, str, int, int]] = []  # option, name, soft, hard
    cgroup: str | None = None
    if limits is not None:
        tasks = limits.task_limit()
        for option, name, value in (
            ("cpu", "RLIMIT_CPU", limits.cpu_seconds),
            ("data", "RLIMIT_DATA", None if limits.memory_mb is None else limits.memory_mb * _MIB),
            ("fsize", "RLIMIT_FSIZE", None if limits.file_size_mb is None else limits.file_size_mb * _MIB),
            ("nofile", "RLIMIT_NOFILE", limits.open_files),
            # Counts every process of the real uid and never binds root: only
            # meaningful for a child that runs as its own user.
            ("nproc", "RLIMIT_NPROC", tasks if uid not in (None, 0) else None),
        ):
            if value is not None:
                # CPU: SIGXCPU at the soft limit (a named, catchable stop), SIGKILL a second later.
                rlimits.append((option, name, value, value + 1 if option == "cpu" else value))
        if tasks is not None and machine.cgroup is not None:
            try:
                cgroup = make_cgroup(machine.cgroup, service, tasks)
            except OSError as error:
                raise SandboxError(error.errno, error.strerror) from None
    confined = policy.level != "none"
    drop_caps = confined and machine.can_drop_caps and uid in (None, 0)
    procs = os.path.join(cgroup, "cgroup.procs") if cgroup else None
    if util_linux(machine, cgroup is not None):
        bins = machine.binaries
        args = [bins["setsid"], "--"]
        if procs:
            # The shell exports PWD: take it back unless the child is meant to have it.
            script = _JOIN_CGROUP + ('exec "$@"' if "PWD" in env else 'unset PWD; exec "$@"')
            args += [bins["sh"], "-c", script, procs]
        if rlimits:
            args += [bins["prlimit"], *(_prlimit(option, soft, hard) for option, _, soft, hard in rlimits), "--"]
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
            "rlimits": [[name, soft, hard] for _, name, soft, hard in rlimits],
            "uid": uid,
            "gid": gid,
            "nnp": confined,
            "drop_caps": drop_caps,
        }
        args = [sys.executable, "-I", "-S", SHIM, json.dumps(spec), *command]
    return Launch(args[0], args, env, home, uid, gid, cgroup)
