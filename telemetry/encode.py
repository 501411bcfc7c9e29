"""Queued items -> one Batch: trainer records (StepRecord, EvalRecord), row snapshots
(RunState, AdapterState), span rows and raw metric rows, in queue order."""

from __future__ import annotations

from collections.abc import Iterable

from lorafleet.store.evals import EvalRow
from lorafleet.telemetry.batch import (
    AdapterState,
    Batch,
    FlushMarker,
    MetricRow,
    RunState,
    SpanRows,
    datetime_from_us,
    metrics_table,
)
from lorafleet.trainer.callbacks import EvalRecord, StepRecord

STEP_METRICS = ("loss", "grad_norm", "learning_rate", "tokens", "tokens_per_s", "step_seconds")


def encode(items: Iterable, token: str) -> Batch:
    """Turn queued items into one batch. Metric rows go column-wise into Arrow (the fast path)."""
    metric_rows: list[tuple] = []
    add_row = metric_rows.append
    batch = Batch(token)
    for item in items:
        kind = type(item)
        if kind is tuple:
            add_row(item)
        elif kind is StepRecord:
            metric_rows.extend(step_metric_rows(item))
        elif kind is EvalRecord:
            metric_rows.extend(eval_metric_rows(item))
            batch.evals.extend(eval_rows(item))
        elif kind is SpanRows:
            batch.spans.extend(item.rows)
        elif kind is AdapterState:
            batch.adapters.append(item)
        elif kind is RunState:
            batch.runs.append(item)
        elif kind is FlushMarker:
            batch.markers.append(item)
        else:
            raise TypeError(f"telemetry writer: cannot encode {kind.__name__}")
    batch.metrics = metrics_table(metric_rows) if metric_rows else None
    return batch


def step_metric_rows(record: StepRecord) -> list[MetricRow]:
    """The six per-adapter signals of one fleet step, keyed by each adapter's own step."""
    ts = record.end_ns // 1000
    seconds = record.duration_s
    rows = []
    for a in record.adapters:
        tokens_per_s = a.tokens / seconds if seconds > 0 else 0.0
        values = (a.loss, a.grad_norm, a.learning_rate, float(a.tokens), tokens_per_s, seconds)
        rows.extend(
            (record.run_id, a.adapter, name, a.step, value, ts)
            for name, value in zip(STEP_METRICS, values, strict=True)
        )
    return rows


def eval_metric_rows(record: EvalRecord) -> list[MetricRow]:
    ts = record.end_ns // 1000
    return [
        (record.run_id, record.adapter, f"eval/{record.suite}/{name}", record.step, float(value), ts)
        for name, value in record.metrics.items()
    ]


def eval_rows(record: EvalRecord) -> list[EvalRow]:
    ts = datetime_from_us(record.end_ns // 1000)
    return [
        EvalRow(
            run_id=record.run_id,
            adapter=record.adapter,
            step=record.step,
            suite=record.suite,
            metric=metric,
            example_id=example.example_id,
            score=float(score),
            prompt=example.prompt,
            output=example.output,
            reference=example.reference,
            ts=ts,
        )
        for example in record.examples
        for metric, score in example.scores.items()
    ]
