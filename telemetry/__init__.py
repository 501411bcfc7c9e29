"""Telemetry: OpenTelemetry traces and per-adapter signals into the store, live Prometheus metrics.

`Telemetry` is the trainer's observer (a TrainerCallback); `lorafleet train` passes one in.
Names load on first use, so the store's child process (_store_child) imports neither the
trainer nor OpenTelemetry.
"""

from importlib import import_module

_EXPORTS = {
    "Batch": "batch",
    "MetricRow": "batch",
    "STEP_METRICS": "encode",
    "BatchWriter": "writer",
    "WriterStats": "writer",
    "ClickHouseSpanExporter": "tracing",
    "RunTracer": "tracing",
    "TraceSampling": "tracing",
    "PrometheusMetrics": "prom",
    "ProcessStoreSink": "store_process",
    "Spool": "spool",
    "spool_root": "spool",
    "StoreSink": "sink",
    "Telemetry": "observer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lorafleet.telemetry' has no attribute {name!r}")
    value = getattr(import_module(f"lorafleet.telemetry.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
