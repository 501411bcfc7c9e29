"""The one batched writer: a bounded queue the training thread appends to, drained by a worker.

`emit` costs one deque append. The worker wakes when a batch is ready or every
`flush_interval_s`, encodes what is queued (encode.encode) and hands it to the sink. A timed
flush waits longer when writes are costly (an embedded store session costs tens of ms of CPU),
so the writer's share of the machine stays under `max_duty`. When the
sink cannot take it (StoreUnavailable), the batch goes to the spool on disk and every later
batch queues up behind it there, so replay keeps order; the worker retries the store every
`retry_s` and replays the spool oldest first. Where OpenTelemetry's processor drops on a full
queue, this one spills to the spool from the emitting thread in chunks (counted in
`overflowed`). Each batch gets its token when its items leave the queue, so any copy of it
(a replay, a spill at shutdown) is dropped by the store's insert deduplication if it landed.
Shutdown runs once, within a time limit: flush, else leave the rest spooled, never drop.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass

from lorafleet.errors import StoreUnavailable
from lorafleet.telemetry.batch import Batch, FlushMarker
from lorafleet.telemetry.encode import encode
from lorafleet.telemetry.spool import Spool, has_orphans, orphans

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 5.0  # the longest a timed flush waits because writes were slow


@dataclass
class WriterStats:
    written_rows: int = 0  # rows the sink accepted (directly or by replay)
    spooled_rows: int = 0  # rows that went to disk at some point (cumulative)
    replayed_rows: int = 0  # rows written from the spool
    overflowed: int = 0  # items that found the queue full and were spilled to disk
    batches: int = 0
    store_errors: int = 0


class BatchWriter:
    def __init__(
        self,
        sink,
        spool: Spool,
        *,
        max_queue: int = 2_000_000,
        batch_size: int = 200_000,
        flush_interval_s: float = 1.0,
        retry_s: float = 1.0,
        spill_chunk: int = 20_000,
        replay_orphans: bool = True,
        max_duty: float = 0.05,
    ):
        if max_queue < 1 or batch_size < 1 or flush_interval_s <= 0 or spill_chunk < 1 or not 0 < max_duty <= 1:
            raise ValueError(
                "BatchWriter: max_queue, batch_size, spill_chunk >= 1, flush_interval_s > 0, 0 < max_duty <= 1"
            )
        self.sink = sink
        self.spool = spool
        self.stats = WriterStats()
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._interval = flush_interval_s
        self._retry_s = retry_s
        self._max_duty = max_duty
        self._next_flush = 0.0
        self._export_s = 0.0  # time spent exporting in the current cycle
        self._spill_chunk = spill_chunk
        self._queue: deque = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._overflow: list = []
        self._overflow_lock = threading.Lock()
        self._id = uuid.uuid4().hex[:16]
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._retry_at = 0.0
        self._in_flight: tuple[str, list] | None = None  # (token, items) being encoded/written
        self._orphans_pending = replay_orphans
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="lorafleet-telemetry-writer", daemon=True)
        self._thread.start()

    # -- the training thread's side ---------------------------------------------------------------
    def emit(self, item) -> None:
        queue = self._queue
        if len(queue) < self._max_queue:
            queue.append(item)
            if len(queue) >= self._batch_size and not self._wake.is_set():
                self._wake.set()
        else:
            self._spill(item)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything emitted so far is written or spooled; False on timeout."""
        if self._closed or not self._thread.is_alive():
            return False
        marker = FlushMarker()
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout_s)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Runs once: flush within the limit, else spool what is left; nothing is dropped."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.0, timeout_s))
        if self._thread.is_alive():
            log.warning("telemetry writer: store still busy after %.1fs; leaving the rest spooled", timeout_s)
            self._spool_leftovers()
        self._spill_overflow()
        self.spool.close()
        self.sink.shutdown()

    # -- the worker ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            woken = self._wake.wait(self._wait_time())  # by a full batch, a flush or shutdown
            self._wake.clear()
            stopping = self._stop.is_set()
            if not (woken or stopping or time.monotonic() >= self._due()):
                continue
            self._export_s = 0.0
            try:
                self._cycle()
            except Exception:  # never let the worker die: log, back off, keep the data queued
                log.exception("telemetry writer: unexpected error")
                self._retry_at = time.monotonic() + self._retry_s
            backoff = min(self._export_s / self._max_duty, MAX_BACKOFF_S)
            self._next_flush = time.monotonic() + max(self._interval, backoff)
            if stopping and not self._queue:
                # After a shutdown that timed out, this thread may have spooled once more: let go of the
                # spool directory so a later process can replay it.
                self._spill_overflow()
                self.spool.close()
                return

    def _due(self) -> float:
        """When the next timed cycle is due: the next flush, or sooner a retry of the spooled backlog."""
        if self._retry_at and self.spool:
            return min(self._next_flush, self._retry_at)
        return self._next_flush

    def _wait_time(self) -> float:
        return max(0.01, self._due() - time.monotonic())

    def _cycle(self) -> None:
        if not self._has_work():
            return
        try:
            with self.sink.session():  # one session for the whole cycle: opening one costs tens of ms
                self._work()
        except StoreUnavailable as exc:
            self._store_failed(exc)
            self._work(replay=False)  # the store is marked down: what is queued goes to the spool

    def _has_work(self) -> bool:
        if self._queue or self._overflow:
            return True
        if self.spool and time.monotonic() >= self._retry_at:
            return True
        return self._orphans_pending and has_orphans(self.spool.directory)

    def _work(self, replay: bool = True) -> None:
        if replay:
            self._replay()
        if replay and self._orphans_pending and not self._store_down():
            self._replay_orphans()
        while self._queue:
            token, items = self._take()
            self._in_flight = (token, items)
            batch = encode(items, token)
            if batch.rows:
                self._deliver(batch)
            self._in_flight = None
            if batch.markers:
                self._spill_overflow()  # a flush also covers items that overflowed to memory
                for marker in batch.markers:
                    marker.done.set()
        self._spill_overflow()

    def _take(self) -> tuple[str, list]:
        pop = self._queue.popleft
        items = [pop() for _ in range(min(len(self._queue), self._batch_size))]
        return self._next_token(), items

    def _next_token(self) -> str:
        with self._seq_lock:
            self._seq += 1
            return f"lf-{self._id}-{self._seq}"

    def _deliver(self, batch: Batch) -> None:
        if self._store_down():
            self._to_spool(batch)  # behind what is already spooled, to keep order
            return
        try:
            self._export(batch)
        except StoreUnavailable as exc:
            self._store_failed(exc)
            self._to_spool(batch)
            return
        except Exception:
            log.exception("telemetry writer: the store rejected a batch; it stays spooled for inspection")
            self._to_spool(batch)
            self._retry_at = time.monotonic() + self._retry_s
            return
        self.stats.written_rows += batch.rows
        self.stats.batches += 1

    def _export(self, batch: Batch) -> None:
        start = time.monotonic()
        try:
            self.sink.export(batch)
        finally:
            self._export_s += time.monotonic() - start

    def _store_down(self) -> bool:
        return bool(self.spool) or time.monotonic() < self._retry_at

    def _store_failed(self, exc: Exception) -> None:
        if not self.stats.store_errors or self._retry_at == 0.0:
            log.warning("telemetry writer: store unavailable, spooling to %s (%s)", self.spool.directory, exc)
        self.stats.store_errors += 1
        self._retry_at = time.monotonic() + self._retry_s

    def _to_spool(self, batch: Batch) -> None:
        self.spool.append(batch)
        self.stats.spooled_rows += batch.rows

    def _replay(self, spool: Spool | None = None) -> bool:
        """Write spooled batches oldest first; stop at the first failure. True when it emptied."""
        spool = spool or self.spool
        if time.monotonic() < self._retry_at and not self._stop.is_set():  # at shutdown: one last try
            return False
        while (entry := spool.take()) is not None:
            path, batch = entry
            try:
                self._export(batch)
            except StoreUnavailable as exc:
                self._store_failed(exc)
                return False
            spool.remove(path, batch.rows)
            self.stats.written_rows += batch.rows
            self.stats.replayed_rows += batch.rows
        self._retry_at = 0.0
        return True

    def _replay_orphans(self) -> None:
        """Replay spools that earlier processes left behind (their locks are free)."""
        for spool in orphans(exclude=self.spool.directory):
            try:
                if not self._replay(spool):
                    return
            finally:
                spool.close()
        self._orphans_pending = False

    # -- overflow and leftovers -----------------------------------------------------------------
    def _spill(self, item) -> None:
        with self._overflow_lock:
            self._overflow.append(item)
            self.stats.overflowed += 1
            if len(self._overflow) < self._spill_chunk:
                return
            chunk, self._overflow = self._overflow, []
        self._to_spool(encode(chunk, self._next_token()))

    def _spill_overflow(self) -> None:
        with self._overflow_lock:
            chunk, self._overflow = self._overflow, []
        if chunk:
            self._to_spool(encode(chunk, self._next_token()))

    def _spool_leftovers(self) -> None:
        in_flight = self._in_flight
        if in_flight is not None:
            token, items = in_flight
            self._to_spool(encode(items, token))  # same token: a no-op on replay if the write landed
        items = []
        while self._queue:
            try:
                item = self._queue.popleft()
            except IndexError:
                break
            if type(item) is FlushMarker:
                item.done.set()
            else:
                items.append(item)
        if items:
            self._to_spool(encode(items, self._next_token()))
