"""
The audit log: one record per tool call, through the REST API or C{/mcp},
refusals by a policy included (a L{mcpgateway.calls.CallObserver}).

What a record holds, and its redaction and caps, are in
L{mcpgateway.observe.auditrecord}; the writer thread in
L{mcpgateway.observe.auditwriter} (with C{BATCH_ROWS}, C{STOP_TIMEOUT},
C{PRUNE_CHUNK}).

The reactor only appends the call's fields to a bounded queue
(L{AuditLog.record}: a few microseconds); one writer thread turns them into
rows (redaction, JSON, caps) and writes them in batches, every
C{audit.flush_interval} seconds or every C{BATCH_ROWS} rows, so a slow disk
or database never delays a call.  When the queue is full the new record is
dropped and counted (C{mcpgateway_audit_dropped_total{reason="queue_full"}}),
and a warning is logged at most once a minute.  While the storage cannot be
written the writer keeps its batch and retries with a backoff (1 s doubling
to 30 s); a batch the database refuses (not a connection problem) is dropped
and counted (C{write_failed}).  At stop the writer writes what is queued (for
at most C{STOP_TIMEOUT} seconds; what is left is counted as C{shutdown}).

Records older than C{audit.retain_days} are deleted by a L{LoopingCall}
every C{audit.prune_interval} seconds (the deletion runs in the writer
thread, C{PRUNE_CHUNK} rows at a time between batches).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread

from mcpgateway.config import AuditConfig
from mcpgateway.observe.auditquery import Query
from mcpgateway.observe.auditrecord import RowMaker
from mcpgateway.observe.auditsql import Storage
from mcpgateway.observe.auditstorage import describe, open_storage
from mcpgateway.observe.auditwriter import BATCH_ROWS, STOP_TIMEOUT, Flush, Prune, Writer
from mcpgateway.observe.logs import logger

__all__ = ["AuditLog"]

log = logger("mcpgateway.audit")

#: Seconds between two warnings about dropped records, at least.
WARN_INTERVAL = 60.0
DROP_REASONS = ("queue_full", "write_failed", "shutdown")


class AuditLog:
    """
    The audit log: a L{mcpgateway.calls.CallObserver} that queues one record
    per call, the writer thread that stores them, and the reader that
    C{GET /audit} uses.

    @ivar uri: The storage (C{sqlite:PATH} or C{postgresql://...}).
    @ivar written: Records stored so far.
    @ivar dropped: Records lost so far, by reason (L{DROP_REASONS}).
    @ivar write_errors: Failed attempts to open or write the storage.
    """

    def __init__(
        self,
        config: AuditConfig,
        uri: str,
        clock: IReactorTime,
        reactor: IReactorFromThreads | None = None,
        opener: Callable[[], Storage] | None = None,
        gateway: str | None = None,
    ) -> None:
        """
        Build it; nothing is opened or started before L{start}.

        @param config: The C{audit} section.
        @param uri: The storage (see L{mcpgateway.observe.auditstorage.storage_uri}).
        @param clock: Runs the pruning and tells the time for it and for warnings.
        @param reactor: Gets the writer's results (the global reactor if L{None}).
        @param opener: Opens the storage for the writer (L{open_storage} of C{uri} if L{None}).
        @param gateway: This gateway's name in each record (the host name if L{None}).
        """
        self.config = config
        self.uri = uri
        self._clock = clock
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor  # type: ignore[assignment]
        self._writer = Writer(
            self,
            reactor,  # type: ignore[arg-type]
            opener or (lambda: open_storage(uri, create=True)),
            uri,
            RowMaker(config, gateway or socket.gethostname()).row,
            config.flush_interval,
        )
        #: The writer's queue and wake-up, which L{record} uses directly (it is the hot path).
        self._queue = self._writer.queue
        self._wake = self._writer.wake
        self._limit = config.queue_size
        self._pruner: LoopingCall | None = None
        self._pruning = False
        self._stopped: Deferred[None] | None = None
        self._last_warning = float("-inf")
        self._last_error = float("-inf")
        self._warned_drops = 0
        self._abandoned = False
        self.written = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.write_errors = 0

    # -- the reactor's side ------------------------------------------------------------

    def record(self, record: Any) -> None:
        """
        Queue one call's record (a L{mcpgateway.calls.CallRecord}), or count it
        as dropped when the queue is full.  Never blocks, never raises.
        """
        queue = self._queue
        if len(queue) >= self._limit:
            self._drop("queue_full")
            return
        request = record.request
        queue.append(
            (
                record.started,
                request.principal.name,
                request.address,
                request.front,
                request.service,
                request.tool,
                request.session_id,
                request.arguments,
                record.outcome,
                record.status,
                record.seconds,
                record.result,
            )
        )
        if len(queue) >= BATCH_ROWS:
            self._wake.set()

    def _drop(self, reason: str, count: int = 1) -> None:
        """
        Count lost records; warn at most once per L{WARN_INTERVAL}.  Reactor thread only.
        """
        self.dropped[reason] += count
        now = self._clock.seconds()
        if now - self._last_warning >= WARN_INTERVAL:
            total = sum(self.dropped.values())
            log.warn(
                "audit log: {new} records dropped since the last warning ({total} in all; by reason: {reasons}); "
                "see mcpgateway_audit_dropped_total",
                new=total - self._warned_drops,
                total=total,
                reasons=", ".join(f"{key} {value}" for key, value in self.dropped.items() if value),
            )
            self._last_warning = now
            self._warned_drops = total

    def start(self) -> None:
        """
        Start the writer thread and the pruning.
        """
        if self._writer.thread is not None:
            return
        self._writer.start()
        if self.config.retain_days > 0:
            self._pruner = LoopingCall(self.prune)
            self._pruner.clock = self._clock
            self._pruner.start(self.config.prune_interval, now=True)

    def prune(self) -> None:
        """
        Queue the deletion of the records older than C{audit.retain_days}
        (unless one is still under way).
        """
        if self._pruning or self.config.retain_days <= 0:
            return
        self._pruning = True
        self._writer.put(Prune(self._clock.seconds() - self.config.retain_days * 86400))

    def flush(self) -> Deferred[None]:
        """
        @return: Fires once every record queued so far has been written (or dropped).
        """
        if self._writer.thread is None or self._stopped is not None:
            return succeed(None)
        marker = Flush()
        self._writer.put(marker)
        return marker.done

    def stop(self) -> Deferred[None]:
        """
        Stop pruning, write what is queued, stop the writer.

        @return: Fires when it has stopped (after L{STOP_TIMEOUT} at most:
            then what is left is dropped, as C{shutdown}).
        """
        if self._pruner is not None and self._pruner.running:
            self._pruner.stop()
        if self._writer.thread is None:
            return succeed(None)
        if self._stopped is None:
            self._stopped = Deferred()
            self._writer.stop()
        done: Deferred[None] = Deferred()
        self._stopped.addBoth(lambda result: done.callback(None) if not done.called else None)
        timer = self._clock.callLater(STOP_TIMEOUT, self._gave_up, done)
        done.addBoth(lambda result: timer.cancel() if timer.active() else None)
        return done

    def _gave_up(self, done: Deferred[None]) -> None:
        if not done.called:
            self._abandoned = True
            left = self._writer.waiting()
            log.error(
                "audit log: the writer did not finish within {timeout} s; about {left} records lost",
                timeout=STOP_TIMEOUT,
                left=left,
            )
            self._drop("shutdown", left)
            done.callback(None)

    # -- what the writer tells (a WriterReport) --------------------------------------------

    def rows_written(self, count: int) -> None:
        self.written += count

    def rows_refused(self, count: int, error: Exception) -> None:
        self.write_errors += 1
        if count:
            self._drop("write_failed", count)
        log.error("audit log: the storage refused {count} records: {error}", count=count, error=repr(error))

    def storage_failed(self, error: Exception) -> None:
        """
        The storage could not be opened or written: count, and log at most
        once per L{WARN_INTERVAL}.
        """
        self.write_errors += 1
        now = self._clock.seconds()
        if now - self._last_error >= WARN_INTERVAL:
            self._last_error = now
            log.error(
                "audit log: cannot write to {storage}: {error}; retrying (records queue up to audit.queue_size)",
                storage=describe(self.uri),
                error=str(error).strip() or repr(error),
            )

    def pruned(self, command: Prune) -> None:
        self._pruning = False
        if command.deleted:
            log.info(
                "audit log: deleted {count} records older than {days:g} days",
                count=command.deleted,
                days=self.config.retain_days,
            )

    def writer_finished(self, left: int, markers: list[Flush]) -> None:
        if left and not self._abandoned:
            log.error("audit log: stopped with {left} records not written", left=left)
            self._drop("shutdown", left)
        self._pruning = False
        for marker in markers:
            marker.done.callback(None)
        if self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)

    # -- reading ---------------------------------------------------------------------------

    def query(self, query: Query) -> Deferred[dict[str, Any]]:
        """
        Read one page, in a thread of the reactor's pool.

        @return: Fires with C{{"records": [...], "next_cursor": ...}}, or
            fails with L{StorageError} or the driver's error.
        """
        return deferToThread(self._read, query)

    def _read(self, query: Query) -> dict[str, Any]:
        storage = open_storage(self.uri, create=False)
        try:
            storage.check()
            records, cursor = storage.select(query)
        finally:
            storage.close()
        return {"records": records, "next_cursor": cursor}

    def collector(self) -> Collector:
        """
        @return: Its metrics, for a Prometheus registry.
        """
        return _AuditCollector(self)


class _AuditCollector(Collector):
    """
    The audit log's counters, read at scrape time.
    """

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        audit = self.audit
        dropped = CounterMetricFamily(
            "mcpgateway_audit_dropped",
            "Audit records lost, by reason: queue_full (the writer is behind), write_failed (the storage "
            "refused them), shutdown (not written at stop).",
            labels=["reason"],
        )
        for reason in DROP_REASONS:
            dropped.add_metric([reason], audit.dropped[reason])
        yield dropped
        yield CounterMetricFamily("mcpgateway_audit_records", "Audit records written.", value=audit.written)
        yield CounterMetricFamily(
            "mcpgateway_audit_write_errors",
            "Failed attempts to open or write the audit storage.",
            value=audit.write_errors,
        )
        yield GaugeMetricFamily(
            "mcpgateway_audit_queue", "Audit records waiting for the writer.", value=len(audit._queue)
        )
