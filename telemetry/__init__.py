"""Telemetry: OpenTelemetry traces and per-adapter signals into the store, live Prometheus metrics.

`Telemetry` is the trainer's observer (a TrainerCallback); `lorafleet train` passes one in.
"""

from lorafleet.telemetry.batch import STEP_METRICS, Batch, MetricRow
from lorafleet.telemetry.observer import Telemetry
from lorafleet.telemetry.prom import PrometheusMetrics
from lorafleet.telemetry.sink import StoreSink
from lorafleet.telemetry.spool import Spool, spool_root
from lorafleet.telemetry.tracing import ClickHouseSpanExporter, RunTracer, TraceSampling
from lorafleet.telemetry.writer import BatchWriter, WriterStats

__all__ = [
    "STEP_METRICS",
    "Batch",
    "BatchWriter",
    "ClickHouseSpanExporter",
    "MetricRow",
    "PrometheusMetrics",
    "RunTracer",
    "Spool",
    "StoreSink",
    "Telemetry",
    "TraceSampling",
    "WriterStats",
    "spool_root",
]
