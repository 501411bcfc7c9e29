"""`Telemetry`: the trainer's observer. Every hook runs on the training thread and only
enqueues (records and row snapshots for the writer), updates in-memory Prometheus values, and
builds spans for sampled steps; the store is touched by the writer's thread alone."""

from __future__ import annotations

import atexit
import functools
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

from lorafleet.store.runs import AdapterRow, RunRow
from lorafleet.telemetry.batch import AdapterState, RunState, datetime_from_us
from lorafleet.telemetry.prom import PrometheusMetrics
from lorafleet.telemetry.sink import WRITER_LOCK_TIMEOUT_S, StoreSink
from lorafleet.telemetry.spool import Spool, spool_root
from lorafleet.telemetry.store_process import ProcessStoreSink
from lorafleet.telemetry.tracing import RunTracer, TraceSampling
from lorafleet.telemetry.writer import BatchWriter
from lorafleet.trainer.callbacks import (
    AdapterInfo,
    CheckpointRecord,
    EvalRecord,
    FleetChange,
    RunEnd,
    RunRecord,
    StepRecord,
    TrainerCallback,
)

log = logging.getLogger(__name__)
CHANGE_STATUS = {
    "join": "running",
    "leave": "stopped",
    "quarantine": "quarantined",
    "early_stop": "early_stopped",
    "finish": "finished",
    "rejected": "rejected",
}


def _guarded(hook):
    """A telemetry bug must never stop training: log it and carry on."""

    @functools.wraps(hook)
    def wrapper(self, *args):
        try:
            hook(self, *args)
        except Exception:
            self.hook_errors += 1
            log.exception("telemetry: %s failed", hook.__name__)

    return wrapper


class Telemetry(TrainerCallback):
    """Traces, per-adapter signals and run/adapter rows into the store; live Prometheus metrics.

    store_url None means $LORAFLEET_STORE or the embedded store under LORAFLEET_HOME.
    prometheus_port None turns /metrics off (0 picks a free port; see `.prometheus.port`).
    """

    def __init__(
        self,
        store_url: str | None = None,
        *,
        prometheus_port: int | None = None,
        sampling: TraceSampling | None = None,
        spool_dir: Path | None = None,
        flush_interval_s: float = 1.0,
        max_queue: int = 2_000_000,
        batch_size: int = 200_000,
        tracing: bool = True,
        prometheus_addr: str = "127.0.0.1",
        max_labelled_adapters: int = 64,
        store_lock_timeout_s: float = WRITER_LOCK_TIMEOUT_S,
        store_process: bool = True,
    ):
        self.sampling = sampling or TraceSampling.from_env()
        self.tracing = tracing and os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true"
        self._fixed_spool = spool_dir is not None
        spool = Spool(Path(spool_dir) if spool_dir else spool_root() / f"writer-{uuid.uuid4().hex[:12]}")
        # The store's work runs in a child process by default: chDB holds the GIL while it works.
        sink_type = ProcessStoreSink if store_process else StoreSink
        self.writer = BatchWriter(
            sink_type(store_url, lock_timeout=store_lock_timeout_s),
            spool,
            max_queue=max_queue,
            batch_size=batch_size,
            flush_interval_s=flush_interval_s,
        )
        self._flush_interval_s = flush_interval_s
        self.prometheus: PrometheusMetrics | None = None
        if prometheus_port is not None:
            try:
                self.prometheus = PrometheusMetrics(
                    prometheus_port, addr=prometheus_addr, max_adapters=max_labelled_adapters, writer=self.writer
                )
            except Exception:
                self.writer.shutdown(0)  # nothing was emitted yet: just stop the thread
                raise
        self.tracer: RunTracer | None = None
        self.hook_errors = 0
        self.run: RunRow | None = None
        self.adapters: dict[str, AdapterRow] = {}
        self._adapter_steps: dict[str, int] = {}
        self._last_version = 0
        self._shutdown_lock = threading.Lock()
        self._shut = False
        atexit.register(self.shutdown)

    # -- hooks ------------------------------------------------------------------------------------
    @_guarded
    def on_run_start(self, run: RunRecord) -> None:
        if not self._fixed_spool:
            self.writer.spool.retarget(spool_root() / run.run_id)
        started = run.started_ns or time.time_ns()
        self.run = RunRow(
            run_id=run.run_id,
            name=run.name,
            status="running",
            base_model=run.base_model,
            base_model_sha256=run.base_model_sha256,
            spec=run.spec,
            host=socket.gethostname(),
            pid=os.getpid(),
            code_revision=run.code_revision,
            started_at=datetime_from_us(started // 1000),
        )
        self.adapters = {a.name: self._adapter_row(run.run_id, a, run.resumed_from_step) for a in run.adapters}
        self._emit_run()
        for name in self.adapters:
            self._emit_adapter(name)
        if self.prometheus:
            self.prometheus.start_run(run.run_id)
            self._publish_states()
        if self.tracer:  # a second run through the same observer: close the first one's trace
            self.tracer.shutdown()
        if self.tracing:
            self.tracer = RunTracer(
                run, self.writer.emit, self.sampling, schedule_delay_ms=self._flush_interval_s * 1000
            )

    @_guarded
    def on_step(self, record: StepRecord) -> None:
        self.writer.emit(record)
        steps = self._adapter_steps
        for a in record.adapters:
            steps[a.adapter] = a.step
        if self.prometheus:
            self.prometheus.on_step(record)
        if self.tracer:
            self.tracer.on_step(record)

    @_guarded
    def on_eval(self, record: EvalRecord) -> None:
        self.writer.emit(record)
        if self.prometheus:
            self.prometheus.on_eval(record)
        if self.tracer:
            self.tracer.on_eval(record)

    @_guarded
    def on_checkpoint(self, record: CheckpointRecord) -> None:
        row = self.adapters.get(record.adapter) or AdapterRow(record.run_id, record.adapter, status="running")
        self.adapters[record.adapter] = replace(row, artifact_path=record.path, step=record.step)
        self._emit_adapter(record.adapter)
        if self.tracer:
            self.tracer.on_checkpoint(record)

    @_guarded
    def on_fleet_change(self, change: FleetChange) -> None:
        status = CHANGE_STATUS.get(change.kind)
        if status is None:
            raise ValueError(f"unknown fleet change kind {change.kind!r}")
        if change.kind == "join" and change.adapter_info is not None:
            row = self._adapter_row(change.run_id, change.adapter_info, 0)
        else:
            row = self.adapters.get(change.adapter) or AdapterRow(change.run_id, change.adapter)
        step = self._adapter_steps.get(change.adapter, row.step)
        self.adapters[change.adapter] = replace(row, status=status, status_reason=change.reason, step=step)
        self._emit_adapter(change.adapter)
        if self.prometheus:
            self._publish_states()
        if self.tracer:
            self.tracer.on_fleet_change(change)

    @_guarded
    def on_run_end(self, end: RunEnd) -> None:
        if self.run is None:
            return
        self.run = replace(
            self.run, status=end.status, finished_at=datetime_from_us((end.end_ns or time.time_ns()) // 1000)
        )
        self._emit_run()
        for name, row in self.adapters.items():
            status = end.adapter_status.get(name) or _final_status(row.status, end.status)
            reason = row.status_reason if status == row.status else (end.error or f"run {end.status}")
            step = self._adapter_steps.get(name, row.step)
            self.adapters[name] = replace(row, status=status, status_reason=reason, step=step)
            self._emit_adapter(name)
        if self.prometheus:
            self._publish_states()
        if self.tracer:
            self.tracer.on_run_end(end)

    # -- control ----------------------------------------------------------------------------------
    def flush(self, timeout_s: float = 30.0) -> bool:
        """Export finished spans and wait until everything emitted is written (or spooled)."""
        deadline = time.monotonic() + timeout_s
        if self.tracer:
            self.tracer.force_flush(timeout_s)
        return self.writer.flush(max(0.0, deadline - time.monotonic()))

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Runs once, within `timeout_s`: ends an open run span, flushes spans and signals, and
        leaves whatever the store could not take in the spool. Never drops data."""
        with self._shutdown_lock:
            if self._shut:
                return
            self._shut = True
        atexit.unregister(self.shutdown)
        deadline = time.monotonic() + timeout_s
        if self.tracer:
            try:
                self.tracer.shutdown()  # exports the remaining spans into the writer's queue
            except Exception:
                log.exception("telemetry: tracer shutdown failed")
        self.writer.shutdown(max(0.0, deadline - time.monotonic()))
        if self.prometheus:
            self.prometheus.shutdown()

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- helpers ----------------------------------------------------------------------------------
    def _adapter_row(self, run_id: str, info: AdapterInfo, step: int) -> AdapterRow:
        return AdapterRow(
            run_id=run_id,
            adapter=info.name,
            family=info.family,
            status="running",
            config=info.config,
            dataset_sha256=info.dataset_sha256,
            step=step,
        )

    def _version(self) -> int:
        """A strictly increasing microsecond clock: the version of each row snapshot."""
        self._last_version = max(time.time_ns() // 1000, self._last_version + 1)
        return self._last_version

    def _emit_run(self) -> None:
        self.writer.emit(RunState(self.run, self._version()))

    def _emit_adapter(self, name: str) -> None:
        self.writer.emit(AdapterState(self.adapters[name], self._version()))

    def _publish_states(self) -> None:
        self.prometheus.set_states({name: row.status for name, row in self.adapters.items()})


def _final_status(current: str, run_status: str) -> str:
    if current != "running":
        return current
    return "finished" if run_status == "finished" else "stopped"
