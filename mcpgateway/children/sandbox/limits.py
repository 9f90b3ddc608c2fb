"""
Which sandbox limit stopped a child, told from how it ended: the cgroup's
C{pids.events} (a fork or thread start refused at C{pids.max}), the signal
(C{SIGXCPU} for C{RLIMIT_CPU}, C{SIGXFSZ} for C{RLIMIT_FSIZE}), or a failed
allocation in its stderr (under C{RLIMIT_DATA}).  The answer names the limit,
its value and the configuration key that raises it, so an abort with an
empty stderr does not read as a mystery.
"""

from __future__ import annotations

import signal
from typing import Any

from mcpgateway.children.sandbox.cgroup import pids_refused
from mcpgateway.config.sandbox import SandboxPolicy
from mcpgateway.mcp.exits import ExitInfo

__all__ = ["MEMORY_MARKERS", "explain_exit"]

#: What a program writes when an allocation fails (Python, Node/V8, C++, glibc).
MEMORY_MARKERS = (
    "MemoryError",
    "out of memory",
    "Out of memory",
    "Allocation failed",
    "Cannot allocate memory",
    "bad_alloc",
    "ENOMEM",
    # Python, when a thread's stack cannot be mapped (stacks count against
    # RLIMIT_DATA); a refusal by the task limit is told apart first.
    "can't start new thread",
)


def explain_exit(info: ExitInfo, policy: SandboxPolicy, service: str, cgroup: str | None) -> dict[str, Any] | None:
    """
    Say whether a sandbox limit stopped the child.

    Call it when the child has exited, before its cgroup is removed.

    @param info: How it ended.
    @param policy: The service's sandbox.
    @param service: The service's name (for the key path).
    @param cgroup: The child's cgroup directory, if it had one.
    @return: C{limit} (C{pids}, C{cpu}, C{file_size} or C{memory}),
        C{value} (in the key's unit), C{key} (the configuration key to
        raise) and C{message} (one line saying so), or L{None}.
    """
    limits = policy.limits
    if limits is None:
        return None
    path = f"services.{service}.sandbox.resource_limits."
    tasks = limits.task_limit()
    if cgroup is not None and tasks is not None and pids_refused(cgroup):
        key = limits.task_limit_key()
        value = limits.tasks if key == "tasks" else limits.processes
        if key == "tasks":
            size = f"{tasks} tasks"
        else:
            size = f"{tasks} tasks: {limits.processes} processes x {limits.threads_per_process()} threads"
        what = f"the sandbox's process limit ({size}) refused a new process or thread"
        return _cause("pids", value, path + key, what)
    if info.signal == signal.SIGXCPU and limits.cpu_seconds is not None:
        what = f"the CPU limit ({limits.cpu_seconds} s) ran out"
        return _cause("cpu", limits.cpu_seconds, path + "cpu_seconds", what)
    if info.signal == signal.SIGXFSZ and limits.file_size_mb is not None:
        return _cause(
            "file_size",
            limits.file_size_mb,
            path + "file_size_mb",
            f"a file grew beyond the file size limit ({limits.file_size_mb} MiB)",
        )
    if limits.memory_mb is not None and info.exit_code != 0 and any(m in info.stderr_tail for m in MEMORY_MARKERS):
        return _cause(
            "memory",
            limits.memory_mb,
            path + "memory_mb",
            f"an allocation failed under the memory limit ({limits.memory_mb} MiB of data; thread stacks count too)",
        )
    return None


def _cause(limit: str, value: int | None, key: str, what: str) -> dict[str, Any]:
    return {"limit": limit, "value": value, "key": key, "message": f"{what}; raise {key}"}
