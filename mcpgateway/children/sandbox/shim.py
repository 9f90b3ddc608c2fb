"""
The launch chain in one Python program, for machines without util-linux's
C{setsid}, C{prlimit} or C{setpriv}::

    python -I -S shim.py SPEC command [arguments...]

C{SPEC} is JSON: C{cgroup} (a C{cgroup.procs} file to join, or null),
C{rlimits} (C{[[name, soft, hard], ...]}, e.g. C{["RLIMIT_CPU", 300, 301]}), C{uid} and
C{gid} (or null), C{nnp} (set no_new_privs), C{drop_caps} (empty the
bounding set).  It joins the cgroup, leads a new session, sets the limits,
changes ids, drops capabilities, asks for SIGKILL when its parent dies, and
execs the command with the environment it was given.

Run with C{-I -S}: it imports only the standard library, nothing of the
gateway (L{mcpgateway.children.sandbox.launch} builds its command line).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys

_PR_SET_PDEATHSIG = 1
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_EINVAL = 22


def main(argv: list[str]) -> None:
    """
    Apply the spec in C{argv[1]}, then exec C{argv[2:]}.
    """
    parent = os.getppid()
    # The environment as given: Python may add LC_CTYPE to os.environ (PEP 538).
    with open("/proc/self/environ", "rb") as handle:
        env = dict(entry.split(b"=", 1) for entry in handle.read().split(b"\0") if b"=" in entry)
    spec = json.loads(argv[1])
    if spec["cgroup"]:
        with open(spec["cgroup"], "w") as handle:
            handle.write(str(os.getpid()))
    os.setsid()
    for name, soft, hard in spec["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    libc = ctypes.CDLL(None, use_errno=True)
    if spec["uid"] is not None:
        os.setgroups([])
        os.setresgid(spec["gid"], spec["gid"], spec["gid"])
        os.setresuid(spec["uid"], spec["uid"], spec["uid"])
    if spec["drop_caps"]:
        for cap in range(64):
            if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) and ctypes.get_errno() == _EINVAL:
                break
    if spec["nnp"] and libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
        sys.exit("mcpgateway: PR_SET_NO_NEW_PRIVS failed")
    if libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0):
        sys.exit("mcpgateway: PR_SET_PDEATHSIG failed")
    if os.getppid() != parent:
        sys.exit(137)
    os.execvpe(argv[2], argv[2:], env)  # noqa: S606 - the point of a launcher


if __name__ == "__main__":
    main(sys.argv)
