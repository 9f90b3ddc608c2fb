"""
How a child ended (L{ExitInfo}, L{ChildExited}) and the tail of its stderr
(L{StderrTail}), which is drained continuously into the log so a chatty
child never blocks on a full pipe.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = ["ChildExited", "ExitInfo", "StderrTail", "Unreachable"]


class ExitInfo:
    """
    How a child ended.

    @ivar exit_code: The exit status, or L{None} when killed by a signal.
    @ivar signal: The signal number, or L{None}.
    @ivar reason: Why the gateway thinks it ended (e.g. a protocol violation),
        or L{None} when it simply exited.
    @ivar stderr_tail: The last few KiB the child wrote to stderr.
    @ivar cause: What stopped it, when its supervisor can tell (e.g. a
        sandbox limit: C{limit}, C{value}, C{key}, C{message}), or L{None}.
    """

    def __init__(self, exit_code: int | None, signal: int | None, reason: str | None, stderr_tail: str) -> None:
        self.exit_code = exit_code
        self.signal = signal
        self.reason = reason
        self.stderr_tail = stderr_tail
        self.cause: dict[str, Any] | None = None

    def describe(self) -> str:
        """
        @return: One human line, e.g. C{"exited with status 3"}, followed by
            its L{cause} when known.
        """
        if self.reason:
            what = self.reason
        elif self.signal is not None:
            what = f"killed by signal {self.signal}"
        else:
            what = f"exited with status {self.exit_code}"
        return f"{what} ({self.cause['message']})" if self.cause else what


class ChildExited(Exception):
    """
    The child is gone; every request still waiting fails with this.

    @ivar info: The L{ExitInfo}.
    """

    def __init__(self, info: ExitInfo) -> None:
        super().__init__(f"the MCP server {info.describe()}")
        self.info = info


class Unreachable(ChildExited):
    """
    A remote server could not be reached (connection refused, DNS): the
    request never left the gateway, so a retry is safe.
    """


class StderrTail:
    """
    Keeps the last C{keep} bytes of a child's stderr and logs its lines,
    truncated and rate-limited, so a child that floods stderr keeps working
    and the log stays readable.
    """

    def __init__(
        self,
        log: Logger,
        clock: IReactorTime,
        keep: int = 4096,
        line_limit: int = 2000,
        lines_per_second: int = 20,
    ) -> None:
        self._log = log
        self._clock = clock
        self._keep = keep
        self._line_limit = line_limit
        self._rate = lines_per_second
        self._tail = bytearray()
        self._partial = bytearray()
        self._window = 0.0
        self._logged = 0
        self._dropped = 0
        self.total_bytes = 0

    def feed(self, data: bytes) -> None:
        """
        Take the next chunk of stderr.

        @param data: Bytes the child wrote.
        """
        self.total_bytes += len(data)
        self._tail += data
        if len(self._tail) > 2 * self._keep:
            del self._tail[: -self._keep]
        self._partial += data
        *lines, rest = self._partial.split(b"\n")
        if len(rest) > self._line_limit:
            lines.append(rest)
            rest = bytearray()
        self._partial = bytearray(rest)
        for line in lines:
            self._emit(bytes(line))

    def _emit(self, line: bytes) -> None:
        now = self._clock.seconds()
        if now - self._window >= 1.0:
            if self._dropped:
                self._log.warn("stderr: {dropped} lines not logged (rate limit)", dropped=self._dropped)
            self._window, self._logged, self._dropped = now, 0, 0
        if self._logged >= self._rate:
            self._dropped += 1
            return
        self._logged += 1
        text = line[: self._line_limit].decode("utf-8", "replace").rstrip()
        if text:
            self._log.info("stderr: {line}", line=text)

    def text(self) -> str:
        """
        @return: The kept tail, decoded.  Once older output was dropped, the
            tail starts mid-line: that first partial line is left out, so no
            piece of a secret the cut split is shown (a secret holds no line
            break).
        """
        kept = bytes(self._tail[-self._keep :])
        if self.total_bytes > len(kept):
            cut = kept.find(b"\n")
            if cut != -1:
                kept = kept[cut + 1 :]
        return kept.decode("utf-8", "replace")
