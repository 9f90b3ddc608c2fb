"""
The audit log's writer thread and its queue.

L{mcpgateway.observe.audit.AuditLog} appends each call's fields to the
queue (L{Writer.queue}) on the reactor; the writer thread turns them into
rows (L{mcpgateway.observe.auditrecord}) and writes them in batches of at
most L{BATCH_ROWS}, every C{audit.flush_interval} seconds or as soon as that
many are queued, and runs the commands queued between them (L{Flush},
L{Prune}) in order.  While the storage cannot be opened or written it keeps
its batch and retries with a backoff (1 s doubling to 30 s); a batch the
database refuses (not a connection problem) is dropped.  At stop it writes
what is queued, for at most L{STOP_TIMEOUT} seconds.

It tells the audit log what happened (a L{WriterReport}) in the reactor
thread, through C{callFromThread}.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads

from mcpgateway.observe.auditsql import Storage
from mcpgateway.observe.auditstorage import describe
from mcpgateway.observe.logs import logger

__all__ = ["BATCH_ROWS", "STOP_TIMEOUT", "Flush", "Prune", "Writer", "WriterReport"]

log = logger("mcpgateway.audit")

#: Rows written per transaction, at most; this many queued wake the writer early.
BATCH_ROWS = 500
#: Records deleted per statement when pruning (writes go on in between).
PRUNE_CHUNK = 5000
#: Seconds the writer may take at stop to write what is queued.
STOP_TIMEOUT = 10.0
_BACKOFF_MAX = 30.0


class Flush:
    """
    A marker in the queue: fires its Deferred once everything before it is written.
    """

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred()


class Prune:
    """
    A command in the queue: delete records of calls started before C{before}.

    @ivar deleted: How many it has deleted so far.
    """

    def __init__(self, before: float) -> None:
        self.before = before
        self.deleted = 0


class WriterReport(Protocol):
    """
    What the writer tells the audit log (L{mcpgateway.observe.audit.AuditLog}),
    each in the reactor thread.
    """

    def rows_written(self, count: int) -> None:
        """
        C{count} rows were written.
        """

    def rows_refused(self, count: int, error: Exception) -> None:
        """
        The storage refused C{count} rows (0: a command) for a reason that a
        retry would not change, or a row could not be made: they are lost.
        """

    def storage_failed(self, error: Exception) -> None:
        """
        The storage could not be opened or written; the writer retries.
        """

    def pruned(self, command: Prune) -> None:
        """
        C{command} is done (or was refused).
        """

    def writer_finished(self, left: int, markers: list[Flush]) -> None:
        """
        The writer has stopped.

        @param left: Records it could not write.
        @param markers: The flush markers that were still queued, to fire.
        """


class Writer:
    """
    The writer thread, and the queue it reads.

    @ivar queue: The calls (tuples, as L{mcpgateway.observe.audit.AuditLog.record}
        queues them) and the commands (L{Flush}, L{Prune}) to write and run,
        in order: the reactor appends, the writer pops.
    @ivar wake: Set to have the writer look at the queue before
        C{flush_interval} has passed.
    @ivar held: Rows the writer took from the queue and has not written yet
        (writer thread only).
    @ivar thread: The thread, once started.
    """

    def __init__(
        self,
        report: WriterReport,
        reactor: IReactorFromThreads,
        opener: Callable[[], Storage],
        uri: str,
        row: Callable[[tuple[Any, ...]], tuple[Any, ...]],
        flush_interval: float,
    ) -> None:
        """
        Build it; the thread starts with L{start}.

        @param report: Told what happened, in the reactor thread.
        @param reactor: Runs what the writer tells C{report}.
        @param opener: Opens the storage.
        @param uri: The storage, as logged (without its password).
        @param row: Makes the row of a queued call
            (L{mcpgateway.observe.auditrecord.RowMaker.row}).
        @param flush_interval: Seconds between two writes, at most, while
            fewer than L{BATCH_ROWS} records are queued.
        """
        self._report = report
        self._reactor = reactor
        self._open = opener
        self._uri = uri
        self._row = row
        self._flush_interval = flush_interval
        self.queue: collections.deque[Any] = collections.deque()
        self.wake = threading.Event()
        self._stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.held: list[tuple[Any, ...]] = []

    def start(self) -> None:
        """
        Start the thread.
        """
        self.thread = threading.Thread(target=self._run, name="mcpgateway-audit", daemon=True)
        self.thread.start()

    def put(self, command: Flush | Prune) -> None:
        """
        Queue C{command} and wake the writer.
        """
        self.queue.append(command)
        self.wake.set()

    def stop(self) -> None:
        """
        Have the writer write what is queued and stop (for at most
        L{STOP_TIMEOUT} seconds); it then calls the report's C{writer_finished}.
        """
        self._stopping.set()
        self.wake.set()

    def waiting(self) -> int:
        """
        @return: How many records (and commands) are not written yet.
        """
        return len(self.queue) + len(self.held)

    def _tell(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._reactor.callFromThread(function, *args, **kwargs)

    def _run(self) -> None:
        """
        The writer thread: open the storage, write batches, retry after
        failures, until stopped and drained.
        """
        _name_thread("mcpgw-audit")
        storage: Storage | None = None
        backoff = 1.0
        failing = False
        deadline: float | None = None
        while True:
            stopping = self._stopping.is_set()
            if stopping and deadline is None:
                deadline = time.monotonic() + STOP_TIMEOUT
            if not stopping:
                self.wake.wait(self._flush_interval)
                self.wake.clear()
            try:
                if storage is None:
                    storage = self._connect()
                    again = "again " if failing else ""
                    self._tell(
                        log.info, "audit log: writing {again}to {storage}", again=again, storage=describe(self._uri)
                    )
                    failing, backoff = False, 1.0
                self._drain(storage)
            except Exception as error:
                if storage is not None and not storage.is_transient(error):
                    self._refused(error)
                    continue
                if storage is not None:
                    storage.close()
                    storage = None
                failing = True
                self._tell(self._report.storage_failed, error)
                if deadline is not None:
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(min(backoff, 0.5))
                else:
                    self._stopping.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            if stopping and not self.queue:
                break
        self._finish()
        if storage is not None:
            storage.close()

    def _connect(self) -> Storage:
        """
        @return: The storage, opened and migrated.
        """
        storage = self._open()
        try:
            storage.migrate(time.time())
        except BaseException:
            storage.close()
            raise
        return storage

    def _drain(self, storage: Storage) -> None:
        """
        Write the held batch (if a failure left one) and everything queued, in
        batches, running the commands in the queue in order.  On failure the
        batch being written stays held.
        """
        queue = self.queue
        while True:
            if not self.held:
                while queue and len(self.held) < BATCH_ROWS and isinstance(queue[0], tuple):
                    item = queue.popleft()
                    try:
                        self.held.append(self._row(item))
                    except Exception as error:  # a bug: lose this record only, and say so
                        self._tell(self._report.rows_refused, 1, error)
            if self.held:
                storage.insert(self.held)
                count = len(self.held)
                self.held = []
                self._tell(self._report.rows_written, count)
                continue
            if not queue:
                return
            command = queue[0]
            if isinstance(command, Prune):
                deleted = storage.prune(command.before, PRUNE_CHUNK)
                command.deleted += deleted
                queue.popleft()
                if deleted == PRUNE_CHUNK:
                    queue.append(command)  # more: go on after the rows queued meanwhile
                else:
                    self._tell(self._report.pruned, command)
            else:
                queue.popleft()
                self._tell(command.done.callback, None)

    def _refused(self, error: Exception) -> None:
        """
        The storage refused the held batch, or the command at the head of the
        queue, for a reason that a retry would not change: drop it.
        """
        if self.held:
            count, self.held = len(self.held), []
            self._tell(self._report.rows_refused, count, error)
        elif self.queue:
            command = self.queue.popleft()
            self._tell(self._report.rows_refused, 0, error)
            if isinstance(command, Prune):
                self._tell(self._report.pruned, command)
            elif isinstance(command, Flush):
                self._tell(command.done.callback, None)

    def _finish(self) -> None:
        """
        The writer's last act: count what it could not write, fire the flush markers.
        """
        left = len(self.held)
        self.held = []
        markers = []
        while self.queue:
            item = self.queue.popleft()
            if isinstance(item, tuple):
                left += 1
            elif isinstance(item, Flush):
                markers.append(item)

        self._tell(self._report.writer_finished, left, markers)


def _name_thread(name: str) -> None:
    """
    Name the calling thread for C{top -H} and C{/proc/<pid>/task/<tid>/comm}
    (best effort, Linux).
    """
    path = f"/proc/self/task/{threading.get_native_id()}/comm"
    with contextlib.suppress(OSError), open(path, "w") as handle:
        handle.write(name[:15])
