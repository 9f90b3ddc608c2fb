"""
A probe for the sandbox: reports what the process it runs in may do.

Standard library only, and the modes below do not import the MCP helper, so
a copy of this one file runs anywhere, under any uid, with C{python -I -S}:

  - C{report}: print one JSON object (L{report}) and exit.
  - C{wait}: print the report, then sleep until killed.
  - C{threadbomb N}: start up to C{N} sleeping threads, print how many
    started and the error, then sleep;
  - C{forkbomb N}: fork up to C{N} children that sleep, print
    C{{"forked": k, "error": ...}}, then sleep until killed.
  - C{hog MB}: allocate C{MB} MiB, print C{{"allocated": ..., "error": ...}}.
  - C{fill MB}: write C{MB} MiB to C{./big}, print C{{"written": ..., "error": ...}}.
  - C{escape}: start a grandchild in a new session (out of the process
    group), print C{{"grandchild": pid}} and exit.

Without a mode it is a stdio MCP server (through C{_mcp.py} next to it) with
one tool, C{report}, that answers with the same JSON as text.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import sys
import threading
import time
from typing import Any

_PR_GET_PDEATHSIG = 2
_PR_GET_NO_NEW_PRIVS = 39
_MIB = 1024 * 1024


def _prctl_int(option: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    value = ctypes.c_int(0)
    libc.prctl(option, ctypes.byref(value), 0, 0, 0)
    return value.value


def _status() -> dict[str, str]:
    fields = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if name in ("NoNewPrivs", "CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb", "Threads"):
                fields[name] = value.strip()
    return fields


def _environ() -> dict[str, str]:
    """
    @return: The environment this process was started with (Python itself may
        add to C{os.environ}, e.g. C{LC_CTYPE} when it coerces the C locale).
    """
    with open("/proc/self/environ", "rb") as handle:
        entries = handle.read().split(b"\0")
    pairs = (entry.decode("utf-8", "surrogateescape").partition("=") for entry in entries if entry)
    return {name: value for name, _, value in pairs}


def report() -> dict[str, Any]:
    """
    @return: The environment, cwd, limits, process group, session, parent-death
        signal, ids, cgroups and capabilities of this process.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    limits = {}
    for name in ("CPU", "DATA", "NPROC", "FSIZE", "NOFILE", "AS"):
        limits[name] = list(resource.getrlimit(getattr(resource, f"RLIMIT_{name}")))
    with open("/proc/self/cgroup") as handle:
        cgroup = handle.read()
    try:
        with open(os.path.join(os.environ.get("TMPDIR", "."), "probe-was-here"), "w") as handle:
            handle.write("x")
        tmpdir_writable = True
    except OSError:
        tmpdir_writable = False
    return {
        "environ": _environ(),
        "cwd": os.getcwd(),
        "rlimits": limits,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgrp(),
        "sid": os.getsid(0),
        "group_leader": os.getpgrp() == os.getpid(),
        "pdeathsig": _prctl_int(_PR_GET_PDEATHSIG),
        "no_new_privs": libc.prctl(_PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "egid": os.getegid(),
        "groups": os.getgroups(),
        "cgroup": cgroup,
        "status": _status(),
        "tmpdir_writable": tmpdir_writable,
    }


def _say(value: Any) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def _sleep_forever() -> None:
    while True:
        time.sleep(3600)


def fork_bomb(limit: int) -> None:
    """
    Fork until the kernel refuses (or C{limit} children), report, then wait to be killed.
    """
    forked = 0
    error = ""
    while forked < limit:
        try:
            pid = os.fork()
        except OSError as e:
            error = errno.errorcode.get(e.errno or 0, str(e))
            break
        if pid == 0:
            try:
                _sleep_forever()
            finally:
                os._exit(0)
        forked += 1
    _say({"forked": forked, "error": error})
    _sleep_forever()


def thread_bomb(limit: int) -> None:
    """
    Start sleeping threads until the kernel refuses (or C{limit}), report, then wait to be killed.
    """
    started = 0
    error = ""
    while started < limit:
        try:
            threading.Thread(target=_sleep_forever, daemon=True).start()
        except RuntimeError as e:
            error = str(e)
            break
        started += 1
    _say({"threads": started, "error": error})
    _sleep_forever()


def hog(megabytes: int) -> None:
    """
    Allocate C{megabytes} MiB and touch every page.
    """
    try:
        block = bytearray(megabytes * _MIB)
        for offset in range(0, len(block), 4096):
            block[offset] = 1
    except MemoryError:
        _say({"allocated": False, "error": "MemoryError"})
    else:
        _say({"allocated": True, "error": ""})


def fill(megabytes: int) -> None:
    """
    Write C{megabytes} MiB to C{./big}.
    """
    written = 0
    error = ""
    chunk = b"x" * _MIB
    with open("big", "wb", buffering=0) as handle:
        try:
            for _ in range(megabytes):
                written += handle.write(chunk) or 0
        except OSError as e:
            error = errno.errorcode.get(e.errno or 0, str(e))
    _say({"written": written, "size": os.path.getsize("big"), "error": error})


def escape() -> None:
    """
    Leave a grandchild behind in its own session.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)  # let whoever reads the probe's output see its end
        os.close(read_end)
        os.write(write_end, b"x")
        os.close(write_end)
        try:
            _sleep_forever()
        finally:
            os._exit(0)
    os.close(write_end)
    os.read(read_end, 1)
    _say({"grandchild": pid})


def serve() -> None:
    """
    Be a stdio MCP server with the C{report} tool.
    """
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _mcp import Server, Tool, main

    main(Server("probe", [Tool("report", "Report the sandbox.", lambda r, a: json.dumps(report()))]))


def run(argv: list[str]) -> None:
    """
    @param argv: The mode and its argument.
    """
    mode = argv[0] if argv else "serve"
    if mode == "report":
        _say(report())
    elif mode == "wait":
        _say(report())
        _sleep_forever()
    elif mode == "forkbomb":
        fork_bomb(int(argv[1]))
    elif mode == "threadbomb":
        thread_bomb(int(argv[1]))
    elif mode == "hog":
        hog(int(argv[1]))
    elif mode == "fill":
        fill(int(argv[1]))
    elif mode == "escape":
        escape()
    elif mode == "serve":
        serve()
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    run(sys.argv[1:])
