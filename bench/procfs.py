"""
What the benchmark reads from C{/proc}: a process's fields and live children
(and waiting for them to exit), resident memory (RSS, PSS) and CPU time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence


def stat_fields(pid: int) -> list[bytes] | None:
    """
    @return: The fields of C{/proc/<pid>/stat} after the command name
        (state is [0], ppid [1], utime [11], stime [12]), or L{None}.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children_of(parent: int) -> list[int]:
    """
    @param parent: A process id.
    @return: Its live (not zombie) child processes.
    """
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields and int(fields[1]) == parent and fields[0] != b"Z":
                found.append(int(entry))
    return found


def _status_kb(pid: int, key: bytes, name: str = "status") -> int | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_kb(pid: int) -> int:
    """
    @return: The process's resident set size (VmRSS), in KiB; 0 if it is gone.
    """
    return _status_kb(pid, b"VmRSS:") or 0


def pss_kb(pid: int) -> int | None:
    """
    @return: Its proportional set size (shared pages divided among sharers), in KiB.
    """
    return _status_kb(pid, b"Pss:", "smaps_rollup")


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float:
    """
    @param pids: Processes.
    @return: The user plus system CPU time they used so far (gone ones count 0).
    """
    total = 0
    for pid in pids:
        fields = stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def wait_for_children(parent: int, count: int, timeout: float) -> tuple[bool, float]:
    """
    Poll until C{parent} has at most C{count} live children.

    @return: Whether it happened, and after how many seconds.
    """
    start = time.perf_counter()
    deadline = start + timeout
    while len(children_of(parent)) > count:
        if time.perf_counter() > deadline:
            return False, time.perf_counter() - start
        time.sleep(0.05)
    return True, time.perf_counter() - start
