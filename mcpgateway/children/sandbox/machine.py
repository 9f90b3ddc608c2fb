"""
What this machine lets the sandbox enforce, probed once: the util-linux
helpers of the launch chain, a cgroup for process limits, and whether the
gateway may change ids and drop capabilities.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from mcpgateway.children.sandbox.cgroup import CgroupBase, find_cgroup

__all__ = ["Machine", "probe", "sandbox_capabilities", "util_linux"]

_CAP_SETGID, _CAP_SETUID, _CAP_SETPCAP = 6, 7, 8


@dataclass(frozen=True)
class Machine:
    """
    What L{probe} found.
    """

    binaries: Mapping[str, str]
    cgroup: CgroupBase | None
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


@functools.lru_cache(maxsize=1)
def probe() -> Machine:
    """
    Probe once what this machine supports (cheap: a few files under /proc and /sys).
    """
    caps = _effective_caps()
    cgroup, reason = find_cgroup()
    return Machine(
        binaries=_find_binaries(),
        cgroup=cgroup,
        cgroup_reason=reason,
        root=os.geteuid() == 0,
        can_setid=bool(caps & (1 << _CAP_SETUID) and caps & (1 << _CAP_SETGID)),
        can_drop_caps=os.geteuid() == 0 and bool(caps & (1 << _CAP_SETPCAP)),
    )


def util_linux(machine: Machine, cgroup: bool) -> bool:
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
    machine = probe()
    if machine.cgroup is not None:
        process_limit = "cgroup+user" if machine.can_setid else "cgroup"
    else:
        process_limit = "user" if machine.can_setid else "none"
    return {
        "exec_chain": "util-linux" if util_linux(machine, machine.cgroup is not None) else "python",
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
