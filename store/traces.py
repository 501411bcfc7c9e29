"""otel_traces rows, in the OpenTelemetry Collector's ClickHouse exporter layout, and the
queries the console runs over them (trace of a run, step waterfall, slowest steps)."""

from __future__ import annotations

from collections.abc import Sequence

from lorafleet.store.engine import Store

SPAN_COLUMNS = (
    "Timestamp", "TraceId", "SpanId", "ParentSpanId", "TraceState", "SpanName", "SpanKind",
    "ServiceName", "ResourceAttributes", "ScopeName", "ScopeVersion", "SpanAttributes",
    "Duration", "StatusCode", "StatusMessage",
    "Events.Timestamp", "Events.Name", "Events.Attributes",
    "Links.TraceId", "Links.SpanId", "Links.TraceState", "Links.Attributes",
)  # fmt: skip


def write_spans(store: Store, rows: Sequence[Sequence], *, dedup_token: str | None = None) -> None:
    """Write span rows whose values follow SPAN_COLUMNS. Timestamps are int nanoseconds."""
    if rows:
        store.insert("otel_traces", rows, SPAN_COLUMNS, dedup_token=dedup_token)


def trace_ids_for_run(store: Store, run_id: str) -> list[str]:
    rows = store.query(
        """
        SELECT DISTINCT TraceId FROM otel_traces
        WHERE ResourceAttributes['lorafleet.run.id'] = {run:String} AND ParentSpanId = ''
        """,
        {"run": run_id},
    ).result_rows
    return [r[0] for r in rows]


def trace_spans(store: Store, trace_id: str) -> list[dict]:
    """Every span of one trace, found through the _trace_id_ts lookup as Grafana does."""
    return store.query_rows(
        """
        WITH bounds AS (
            SELECT min(Start) AS t0, max(End) AS t1 FROM otel_traces_trace_id_ts
            WHERE TraceId = {trace:String}
        )
        SELECT TraceId, SpanId, ParentSpanId, SpanName, Timestamp, Duration, StatusCode,
               SpanAttributes, Events.Name AS EventNames
        FROM otel_traces
        WHERE TraceId = {trace:String}
          AND Timestamp >= (SELECT t0 FROM bounds) AND Timestamp <= (SELECT t1 FROM bounds) + 1
        ORDER BY Timestamp
        """,
        {"trace": trace_id},
    )


def step_phases(store: Store, run_id: str, limit: int = 50, slowest: bool = False) -> list[dict]:
    """Phase timings (data, forward, backward, optimizer) of a run's steps.

    With slowest=True the `limit` longest steps are returned, else the latest ones.
    """
    order = "s.Duration DESC" if slowest else "step DESC"
    sql = f"""
        WITH steps AS (
            SELECT SpanId, Duration, toUInt64OrZero(SpanAttributes['lorafleet.step']) AS step, Timestamp
            FROM otel_traces
            WHERE ResourceAttributes['lorafleet.run.id'] = {{run:String}} AND SpanName = 'step'
            ORDER BY {order.replace("s.Duration", "Duration")}
            LIMIT {{limit:UInt32}}
        )
        SELECT s.step AS step, s.Duration / 1e9 AS step_s, s.Timestamp AS start,
               p.SpanName AS phase, (p.Timestamp - s.Timestamp) AS offset_s, p.Duration / 1e9 AS phase_s
        FROM steps AS s
        INNER JOIN (
            SELECT ParentSpanId, SpanName, Timestamp, Duration FROM otel_traces
            WHERE ResourceAttributes['lorafleet.run.id'] = {{run:String}}
              AND SpanName IN ('data', 'forward', 'backward', 'optimizer')
        ) AS p ON p.ParentSpanId = s.SpanId
        ORDER BY {order}, start, phase
    """  # noqa: S608 - `order` is one of two constants; values are bound
    return store.query_rows(sql, {"run": run_id, "limit": limit})
