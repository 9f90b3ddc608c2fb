"""
Per-child cgroups: where they can be made on this machine (v2 with the
C{pids} controller below the gateway's own cgroup, else the v1 C{pids}
hierarchy), making one with C{pids.max} for a child, and removing it (killing
what is left in it) once the child has exited.

Only cheap system calls on files under C{/proc} and C{/sys/fs/cgroup}: safe
on the reactor thread.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import signal
from dataclasses import dataclass

__all__ = ["CgroupBase", "find_cgroup", "make_cgroup", "pids_refused", "release_cgroup", "retry_pending"]

_counter = itertools.count(1)
#: Cgroups of exited children that the kernel had not let go yet.
_pending: set[str] = set()


@dataclass(frozen=True)
class CgroupBase:
    """
    Where per-child cgroups are made: C{directory}/C{<service>-<pid>-<n>}.
    """

    version: str
    directory: str


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


def _try_base(version: str, directory: str) -> CgroupBase:
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
    return CgroupBase(version, base)


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


def find_cgroup() -> tuple[CgroupBase | None, str]:
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


def make_cgroup(base: CgroupBase, service: str, tasks: int) -> str:
    """
    Make a child's own cgroup below C{base} with C{pids.max} = C{tasks}.

    @return: Its directory.
    @raise OSError: If it cannot be made.
    """
    name = re.sub(r"[^A-Za-z0-9_-]", "_", service)[:64] or "service"
    directory = os.path.join(base.directory, f"{name}-{os.getpid()}-{next(_counter)}")
    try:
        os.mkdir(directory, 0o755)
        _write(os.path.join(directory, "pids.max"), str(tasks))
    except OSError as error:
        with contextlib.suppress(OSError):
            os.rmdir(directory)
        raise OSError(
            error.errno or errno.EIO, f"cannot make the child's cgroup {directory}: {error.strerror or error}"
        ) from None
    return directory


def pids_refused(directory: str) -> int:
    """
    @return: How often a fork or thread start in the cgroup was refused
        because C{pids.max} was reached (its C{pids.events} C{max} count);
        0 when that cannot be read.
    """
    try:
        for line in _read(os.path.join(directory, "pids.events")).splitlines():
            name, _, count = line.partition(" ")
            if name == "max":
                return int(count)
    except (OSError, ValueError):
        pass
    return 0


def remove_cgroup(directory: str) -> bool:
    """
    Remove a cgroup, first killing whatever is still in it.

    @return: Whether it is gone.
    """
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


def retry_pending() -> None:
    """
    Remove the cgroups that could not be removed before.
    """
    for directory in list(_pending):
        if remove_cgroup(directory):
            _pending.discard(directory)


def release_cgroup(directory: str) -> bool:
    """
    Remove a child's cgroup (after the child exited), or remember it for
    L{retry_pending} while something of its tree is still in it.

    @return: Whether it is gone.
    """
    retry_pending()
    if remove_cgroup(directory):
        _pending.discard(directory)
        return True
    _pending.add(directory)
    return False
