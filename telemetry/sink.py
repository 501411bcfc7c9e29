"""The store sink: writes one Batch to its tables in one store session, each insert carrying a
token derived from the batch's, so replaying a batch that was partly or wholly written adds nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from clickhouse_connect.driver.exceptions import ClickHouseError

from lorafleet.errors import StoreUnavailable
from lorafleet.store import evals, metrics, runs, traces
from lorafleet.store.engine import Store, open_store
from lorafleet.store.migrations import ensure_schema
from lorafleet.telemetry.batch import Batch, datetime_from_us

log = logging.getLogger(__name__)

WRITER_LOCK_TIMEOUT_S = 2.0


class StoreSink:
    """export(batch) raises StoreUnavailable when the store cannot take it (the writer spools it)."""

    def __init__(self, store_url: str | None = None, *, lock_timeout: float = WRITER_LOCK_TIMEOUT_S):
        # Opening is lazy: the schema check needs the store, which may be away at start.
        self.store: Store = open_store(store_url, migrate=False, lock_timeout=lock_timeout)
        self._schema_ready = False

    def export(self, batch: Batch) -> None:
        with self.session():
            self._ensure_schema()
            self._write(batch)

    @contextmanager
    def session(self) -> Iterator[None]:
        """One store session (for the embedded store: one lock hold) for any number of exports."""
        try:
            with self.store.session():
                yield
        except StoreUnavailable:
            raise
        except (ClickHouseError, OSError, ConnectionError) as exc:
            # A server that refuses connections or a chDB that fails to open: treat as away, retry later.
            raise StoreUnavailable(f"store {self.store.url.masked()}: {type(exc).__name__}: {exc}") from exc

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            ensure_schema(self.store)
            self._schema_ready = True

    def _write(self, batch: Batch) -> None:
        token = batch.token
        if batch.metrics is not None:
            metrics.write_table(self.store, batch.metrics, dedup_token=f"{token}/metrics")
        if batch.evals:
            evals.write_evals(self.store, batch.evals, dedup_token=f"{token}/evals")
        if batch.spans:
            traces.write_spans(self.store, batch.spans, dedup_token=f"{token}/spans")
        if batch.runs:
            for state in _latest(batch.runs, lambda s: s.row.run_id):
                runs.upsert_run(self.store, state.row, updated_at=datetime_from_us(state.version_us))
        if batch.adapters:
            latest = _latest(batch.adapters, lambda s: (s.row.run_id, s.row.adapter))
            runs.upsert_adapters(
                self.store, [s.row for s in latest], updated_at=[datetime_from_us(s.version_us) for s in latest]
            )

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        return True

    def shutdown(self) -> None:
        self.store.close()


def _latest(states: list, key) -> list:
    """Only the newest snapshot per key: the rows are versioned, older ones would be replaced anyway."""
    newest: dict = {}
    for state in states:
        k = key(state)
        if k not in newest or state.version_us >= newest[k].version_us:
            newest[k] = state
    return list(newest.values())
