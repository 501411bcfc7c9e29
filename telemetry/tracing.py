"""OpenTelemetry traces of a fleet run, built after the fact from the trainer's timestamps.

One trace per run: a `run` root span (ended at on_run_end); under it a `step` span per sampled
fleet step with `data`, `forward`, `backward` and `optimizer` children; `eval` and
`checkpoint` spans per adapter; fleet changes (join, leave, quarantine, early_stop, finish) as
events on the run span. Step spans are exported as they end; they carry the run span's
context, so the tree is whole once the run span lands. Attributes use the `lorafleet.`
namespace. `ClickHouseSpanExporter` turns finished spans into `otel_traces` rows exactly as
the OpenTelemetry Collector's ClickHouse exporter writes them and hands them to the writer.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

from lorafleet.telemetry.batch import SpanRows
from lorafleet.trainer.callbacks import CheckpointRecord, EvalRecord, FleetChange, RunEnd, RunRecord, StepRecord

SERVICE_NAME = "lorafleet-trainer"
SCOPE_NAME = "lorafleet.telemetry"
PHASES = ("data", "forward", "backward", "optimizer")
# The Collector writes the proto enum names (contrib's traceutil.SpanKindStr / StatusCodeStr).
SPAN_KIND = {
    SpanKind.INTERNAL: "SPAN_KIND_INTERNAL",
    SpanKind.SERVER: "SPAN_KIND_SERVER",
    SpanKind.CLIENT: "SPAN_KIND_CLIENT",
    SpanKind.PRODUCER: "SPAN_KIND_PRODUCER",
    SpanKind.CONSUMER: "SPAN_KIND_CONSUMER",
}
STATUS_CODE = {
    StatusCode.UNSET: "STATUS_CODE_UNSET",
    StatusCode.OK: "STATUS_CODE_OK",
    StatusCode.ERROR: "STATUS_CODE_ERROR",
}


def lorafleet_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lorafleet")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class TraceSampling:
    """Which steps get spans: all of the first `first_steps`, then one in `every`; steps with a
    non-finite loss or gradient norm, or a quarantine, always. Eval, checkpoint and run spans are
    always kept. Defaults come from LORAFLEET_TRACE_FIRST_STEPS / LORAFLEET_TRACE_EVERY."""

    first_steps: int = 100
    every: int = 100
    keep_errors: bool = True

    def __post_init__(self):
        if self.first_steps < 0 or self.every < 1:
            raise ValueError(f"TraceSampling: first_steps must be >= 0 and every >= 1, got {self}")

    @classmethod
    def from_env(cls) -> TraceSampling:
        return cls(
            first_steps=int(os.environ.get("LORAFLEET_TRACE_FIRST_STEPS", cls.first_steps)),
            every=int(os.environ.get("LORAFLEET_TRACE_EVERY", cls.every)),
        )

    def keeps(self, record: StepRecord) -> bool:
        if record.step <= self.first_steps or record.step % self.every == 0:
            return True
        return self.keep_errors and _has_error(record)


def _has_error(record: StepRecord) -> bool:
    return any(not (math.isfinite(a.loss) and math.isfinite(a.grad_norm)) for a in record.adapters)


class RunTracer:
    """Spans of one run; one TracerProvider whose Resource names the run."""

    def __init__(
        self,
        run: RunRecord,
        emit: Callable[[SpanRows], None],
        sampling: TraceSampling,
        *,
        schedule_delay_ms: float = 1000.0,
    ):
        self.sampling = sampling
        self.provider = TracerProvider(resource=run_resource(run.run_id))
        self.provider.add_span_processor(_processor(ClickHouseSpanExporter(emit), schedule_delay_ms))
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.provider.add_span_processor(_processor(OTLPSpanExporter(), schedule_delay_ms))
        self.tracer = self.provider.get_tracer(SCOPE_NAME, lorafleet_version())
        start = run.started_ns or time.time_ns()
        self.run_span = self.tracer.start_span(
            "run",
            context=Context(),  # a new trace: one per run
            kind=SpanKind.INTERNAL,
            start_time=start,
            attributes={
                "lorafleet.run.id": run.run_id,
                "lorafleet.run.name": run.name,
                "lorafleet.base_model": run.base_model,
                "lorafleet.adapters.count": len(run.adapters),
                "lorafleet.adapter.ids": [a.name for a in run.adapters],
                "lorafleet.resumed_from_step": run.resumed_from_step,
            },
        )
        self._run_ctx = trace.set_span_in_context(self.run_span)
        self._last_end = start
        self._skipped: StepRecord | None = None  # the latest unsampled step, traced if a quarantine names it
        self._open = True

    # -- spans ------------------------------------------------------------------------------------
    def on_step(self, record: StepRecord) -> None:
        if self.sampling.keeps(record):
            self._step_span(record)
            self._skipped = None
        else:
            self._skipped = record

    def _step_span(self, record: StepRecord, error: str = "") -> None:
        adapters = record.adapters
        span = self.tracer.start_span(
            "step",
            context=self._run_ctx,
            start_time=record.start_ns,
            attributes={
                "lorafleet.step": record.step,
                "lorafleet.adapters.active": len(adapters),
                "lorafleet.adapter.ids": [a.adapter for a in adapters],
                "lorafleet.tokens": record.tokens,
                "lorafleet.sequences": sum(a.sequences for a in adapters),
            },
        )
        if error or _has_error(record):
            span.set_status(Status(StatusCode.ERROR, error or "non-finite loss or gradient norm"))
        ctx = trace.set_span_in_context(span)
        for phase in PHASES:
            if phase in record.phases:
                start, end = _inside(record.phases[phase], record.start_ns, record.end_ns)
                child = self.tracer.start_span(
                    phase, context=ctx, start_time=start, attributes={"lorafleet.step": record.step}
                )
                child.end(end_time=end)
        span.end(end_time=record.end_ns)
        self._seen(record.end_ns)

    def on_eval(self, record: EvalRecord) -> None:
        attributes = {
            "lorafleet.adapter.id": record.adapter,
            "lorafleet.step": record.step,
            "lorafleet.eval.suite": record.suite,
            "lorafleet.eval.examples": len(record.examples),
        }
        attributes.update({f"lorafleet.eval.{k}": float(v) for k, v in record.metrics.items()})
        self._leaf("eval", record.start_ns, record.end_ns, attributes)

    def on_checkpoint(self, record: CheckpointRecord) -> None:
        attributes = {
            "lorafleet.adapter.id": record.adapter,
            "lorafleet.step": record.step,
            "lorafleet.checkpoint.path": record.path,
            "lorafleet.checkpoint.final": record.final,
        }
        self._leaf("checkpoint", record.start_ns, record.end_ns, attributes)

    def on_fleet_change(self, change: FleetChange) -> None:
        if change.kind == "quarantine" and self._skipped is not None and self._skipped.step == change.step:
            self._step_span(self._skipped, error=f"quarantine {change.adapter}: {change.reason}")
            self._skipped = None
        attributes = {"lorafleet.adapter.id": change.adapter, "lorafleet.step": change.step}
        if change.reason:
            attributes["lorafleet.reason"] = change.reason
        if change.value is not None:
            attributes["lorafleet.value"] = float(change.value)
        stamp = change.time_ns or time.time_ns()
        self.run_span.add_event(change.kind, attributes=attributes, timestamp=stamp)
        # The run span (and its events) is exported only when the run ends; a span of its own shows the change
        # in the store while the run is live.
        self._leaf("fleet_change", stamp, stamp, {**attributes, "lorafleet.change": change.kind})

    def on_run_end(self, end: RunEnd) -> None:
        self.end_run(end.status, end.step, end.end_ns, end.error)

    def end_run(self, status: str, step: int, end_ns: int = 0, error: str = "") -> None:
        if not self._open:
            return
        self._open = False
        self.run_span.set_attribute("lorafleet.run.status", status)
        self.run_span.set_attribute("lorafleet.step", step)
        if status != "finished":
            self.run_span.set_status(Status(StatusCode.ERROR, error or status))
        self.run_span.end(end_time=max(end_ns or time.time_ns(), self._last_end))

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        return self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        self.end_run("interrupted", 0)
        self.provider.shutdown()

    def _leaf(self, name: str, start_ns: int, end_ns: int, attributes: dict) -> None:
        span = self.tracer.start_span(name, context=self._run_ctx, start_time=start_ns, attributes=attributes)
        span.end(end_time=max(start_ns, end_ns))
        self._seen(end_ns)

    def _seen(self, end_ns: int) -> None:
        self._last_end = max(self._last_end, end_ns)


def run_resource(run_id: str) -> Resource:
    """service.name (unless OTEL_SERVICE_NAME says otherwise), service.version, the run id and host;
    OTEL_RESOURCE_ATTRIBUTES is merged in by the SDK."""
    attributes = {"service.version": lorafleet_version(), "lorafleet.run.id": run_id, "host.name": socket.gethostname()}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = SERVICE_NAME
    return Resource.create(attributes)


def _processor(exporter: SpanExporter, schedule_delay_ms: float) -> BatchSpanProcessor:
    # OTEL_BSP_* win when set; otherwise a queue big enough that the first steps never drop spans.
    env = os.environ.get
    return BatchSpanProcessor(
        exporter,
        max_queue_size=None if env("OTEL_BSP_MAX_QUEUE_SIZE") else 65536,
        schedule_delay_millis=None if env("OTEL_BSP_SCHEDULE_DELAY") else schedule_delay_ms,
        max_export_batch_size=None if env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") else 4096,
    )


def _inside(interval: tuple[int, int], lo: int, hi: int) -> tuple[int, int]:
    start = min(max(interval[0], lo), hi)
    return start, min(max(interval[1], start), hi)


# -- the exporter ---------------------------------------------------------------------------------
class ClickHouseSpanExporter(SpanExporter):
    """Finished spans -> otel_traces rows (SPAN_COLUMNS order), handed to `emit` (the writer)."""

    def __init__(self, emit: Callable[[SpanRows], None]):
        self._emit = emit
        self._stopped = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._stopped:
            return SpanExportResult.FAILURE
        self._emit(SpanRows(tuple(span_row(s) for s in spans)))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._stopped = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_row(span: ReadableSpan) -> tuple:
    ctx = span.context
    resource = span.resource.attributes
    scope = span.instrumentation_scope
    parent = span.parent
    return (
        span.start_time,
        format(ctx.trace_id, "032x"),
        format(ctx.span_id, "016x"),
        format(parent.span_id, "016x") if parent is not None and parent.span_id else "",
        ctx.trace_state.to_header() if ctx.trace_state else "",
        span.name,
        SPAN_KIND.get(span.kind, ""),
        str(resource.get("service.name", "")),
        attributes_map(resource),
        scope.name if scope else "",
        (scope.version or "") if scope else "",
        attributes_map(span.attributes),
        max(0, span.end_time - span.start_time),
        STATUS_CODE[span.status.status_code],
        span.status.description or "",
        [e.timestamp for e in span.events],
        [e.name for e in span.events],
        [attributes_map(e.attributes) for e in span.events],
        [format(link.context.trace_id, "032x") for link in span.links],
        [format(link.context.span_id, "016x") for link in span.links],
        [link.context.trace_state.to_header() if link.context.trace_state else "" for link in span.links],
        [attributes_map(link.attributes) for link in span.links],
    )


def attributes_map(attributes) -> dict[str, str]:
    """Attribute values as strings, the way pcommon.Value.AsString renders them."""
    return {k: attribute_str(v) for k, v in (attributes or {}).items()}


def attribute_str(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _float_str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        import base64

        return base64.b64encode(value).decode()
    return json.dumps([_json_value(v) for v in value], separators=(",", ":"))


def _json_value(value):
    return _float_str(value) if isinstance(value, float) and not math.isfinite(value) else value


def _float_str(value: float) -> str:
    # Go's strconv.FormatFloat(v, 'f', -1, 64): shortest digits, never an exponent.
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return np.format_float_positional(value, trim="-")
