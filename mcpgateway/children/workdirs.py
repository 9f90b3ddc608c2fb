"""
A service's directories under the gateway's sandbox directory
(L{mcpgateway.children.service}): a private working directory per child,
removed when it ends, and a cache directory shared by its children.

A service configured with a fixed C{sandbox.working_dir} runs every child
there instead, and that directory is never removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet.threads import deferToThread

from mcpgateway.config.sandbox import SandboxPolicy
from mcpgateway.observe.logs import logger

__all__ = ["WorkDirs"]

log = logger("mcpgateway.service")


class WorkDirs:
    """
    The directories of one service's children.
    """

    def __init__(self, sandbox_dir: str, name: str, policy: SandboxPolicy) -> None:
        """
        @param sandbox_dir: The gateway's sandbox directory, made when first needed.
        @param name: The service's name.
        @param policy: The service's sandbox policy (C{working_dir}, C{user}).
        """
        self._sandbox_dir = sandbox_dir
        self._name = name
        self._policy = policy

    def make(self) -> str:
        """
        @return: A new child's working directory: a fresh private one,
            C{<sandbox_dir>/<name>-...}, or the fixed C{working_dir}.
        @raise OSError: If it cannot be made.
        """
        if self._policy.working_dir:
            return self._policy.working_dir
        # A child run as its own user must be able to pass through to its
        # directory (which build_launch gives it); nobody may list the others.
        os.makedirs(self._sandbox_dir, mode=0o711 if self._policy.uid is not None else 0o700, exist_ok=True)
        return tempfile.mkdtemp(prefix=f"{self._name}-", dir=self._sandbox_dir)

    def cache(self) -> str:
        """
        @return: The service's cache directory, C{<sandbox_dir>/.cache/<name>}:
            kept between its children (so C{npx} and C{uvx} download once),
            private to the service (and owned by its C{user}).
        @raise OSError: If it cannot be made.
        """
        root = os.path.join(self._sandbox_dir, ".cache")
        directory = os.path.join(root, self._name)
        os.makedirs(root, mode=0o711, exist_ok=True)
        if not os.path.isdir(directory):
            os.mkdir(directory, 0o700)
            if self._policy.uid is not None and self._policy.gid is not None:
                os.chown(directory, self._policy.uid, self._policy.gid)
        return os.path.abspath(directory)

    def remove(self, workdir: str | None) -> None:
        """
        Remove a child's working directory in a thread (never the fixed
        C{working_dir}); a failure is logged.

        @param workdir: What L{make} gave, or L{None} (nothing to remove).
        """
        if workdir and workdir != self._policy.working_dir:
            deferToThread(shutil.rmtree, workdir, True).addErrback(
                lambda f: log.failure("removing {dir}", f, dir=workdir)
            )
