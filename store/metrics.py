"""Per-adapter step signals: batch writes, downsampled curves, the fleet's latest values."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa

from lorafleet.store.engine import Store

METRIC_COLUMNS = ("run_id", "adapter", "metric", "step", "value", "ts")
ARROW_SCHEMA = pa.schema(
    [
        ("run_id", pa.dictionary(pa.int32(), pa.string())),
        ("adapter", pa.dictionary(pa.int32(), pa.string())),
        ("metric", pa.dictionary(pa.int32(), pa.string())),
        ("step", pa.uint64()),
        ("value", pa.float64()),
        ("ts", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass(frozen=True, slots=True)
class MetricPoint:
    run_id: str
    adapter: str
    metric: str
    step: int
    value: float
    ts: datetime


def write_points(store: Store, points: Sequence[MetricPoint] | Iterable[tuple], *, dedup_token: str | None = None):
    """Write metric points (MetricPoint or tuples in METRIC_COLUMNS order) as one block."""
    rows = list(points)
    if not rows:
        return
    columns = list(zip(*rows, strict=True))
    write_columns(store, *columns, dedup_token=dedup_token)


def write_columns(store: Store, run_id, adapter, metric, step, value, ts, *, dedup_token: str | None = None):
    """Column-wise write: the fast path (Arrow with dictionary-encoded names)."""
    write_table(store, arrow_table(run_id, adapter, metric, step, value, ts), dedup_token=dedup_token)


def write_table(store: Store, table: pa.Table, *, dedup_token: str | None = None) -> None:
    """Insert a table built by `arrow_table` as one block."""
    store.insert_arrow("metrics", table, dedup_token=dedup_token)


def arrow_table(run_id, adapter, metric, step, value, ts) -> pa.Table:
    """Metric columns in the table's Arrow form (ARROW_SCHEMA); `ts` as datetimes or a timestamp pa.Array."""
    return pa.table(
        [
            _names(run_id),
            _names(adapter),
            _names(metric),
            pa.array(np.asarray(step, dtype=np.uint64)),
            pa.array(np.asarray(value, dtype=np.float64)),
            ts if isinstance(ts, pa.Array) else pa.array(ts, pa.timestamp("us", tz="UTC")),
        ],
        schema=ARROW_SCHEMA,
    )


def _names(values) -> pa.DictionaryArray:
    """Names as a dictionary column (ClickHouse LowCardinality): callers with many rows can
    pass a ready pa.DictionaryArray and skip per-row Python strings."""
    if isinstance(values, pa.DictionaryArray):
        return values.cast(pa.dictionary(pa.int32(), pa.string()))
    return pa.array(values, pa.string()).dictionary_encode().cast(pa.dictionary(pa.int32(), pa.string()))


def write_df(store: Store, df, *, dedup_token: str | None = None) -> None:
    """Write a DataFrame with the METRIC_COLUMNS columns."""
    missing = set(METRIC_COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"metrics DataFrame lacks columns: {sorted(missing)}")
    write_columns(
        store,
        *(df[c].to_numpy() if c in ("step", "value") else df[c].tolist() for c in METRIC_COLUMNS),
        dedup_token=dedup_token,
    )


def fleet_latest(
    store: Store, run_ids: Sequence[str] | None = None, metrics: Sequence[str] | None = None
) -> list[dict]:
    """The latest value (by step) of each metric for every adapter of the given runs (all runs if None)."""
    return store.query_rows(
        """
        SELECT run_id, adapter, metric, max(step) AS step, argMaxMerge(value) AS value, max(ts) AS ts
        FROM metrics_latest
        WHERE (empty({runs:Array(String)}) OR run_id IN {runs:Array(String)})
          AND (empty({metrics:Array(String)}) OR metric IN {metrics:Array(String)})
        GROUP BY run_id, adapter, metric
        ORDER BY run_id, adapter, metric
        """,
        {"runs": list(run_ids or []), "metrics": list(metrics or [])},
    )


def series(
    store: Store,
    run_id: str,
    adapter: str,
    metric: str,
    max_points: int = 1000,
    step_range: tuple[int, int] | None = None,
) -> list[dict]:
    """One curve downsampled in SQL to at most `max_points` buckets of steps.

    Each bucket keeps its first step, min, max, last value and mean, so spikes survive.
    """
    lo, hi = step_range or (0, 2**63 - 1)
    return store.query_rows(
        """
        WITH points AS (
            SELECT step AS s, value AS v, ts AS t FROM metrics
            WHERE run_id = {run:String} AND adapter = {adapter:String} AND metric = {metric:String}
              AND step BETWEEN {lo:UInt64} AND {hi:UInt64}
        ),
        (SELECT min(s) FROM points) AS s0,
        (SELECT greatest(1, intDiv(max(s) - min(s) + {k:UInt64}, {k:UInt64})) FROM points) AS width
        SELECT
            min(s) AS step,
            min(v) AS min,
            max(v) AS max,
            argMax(v, s) AS last,
            avg(v) AS mean,
            max(t) AS ts,
            count() AS points
        FROM points
        GROUP BY intDiv(s - s0, width) AS bucket
        ORDER BY bucket
        """,
        {
            "run": run_id,
            "adapter": adapter,
            "metric": metric,
            "k": max(1, int(max_points)),
            "lo": lo,
            "hi": hi,
        },
    )


def metric_names(store: Store, run_id: str) -> list[str]:
    rows = store.query(
        "SELECT DISTINCT metric FROM metrics_latest WHERE run_id = {run:String} ORDER BY metric",
        {"run": run_id},
    ).result_rows
    return [r[0] for r in rows]


def count_points(store: Store, run_id: str, *, distinct: bool = True) -> int:
    """Rows for a run; with distinct=True counts each (adapter, metric, step) once."""
    expr = "uniqExact(adapter, metric, step)" if distinct else "count()"
    sql = f"SELECT {expr} FROM metrics WHERE run_id = {{run:String}}"  # noqa: S608 - expr is one of two constants
    return int(store.query(sql, {"run": run_id}).result_rows[0][0])


# -- console queries (appended for the console and Grafana; issue 6) ---------------------------


def sparklines(store: Store, keys: Sequence[tuple[str, str]], metric: str = "loss", points: int = 30) -> list[dict]:
    """One small downsampled curve per (run_id, adapter), all in one query: the fleet table's sparklines.

    Rows: run_id, adapter, values (bucket means in step order).
    """
    if not keys:
        return []
    return store.query_rows(
        """
        SELECT run_id, adapter, groupArray(v) AS values
        FROM (
            SELECT m.run_id AS run_id, m.adapter AS adapter, avg(m.value) AS v,
                   intDiv(m.step * {k:UInt64}, b.hi + 1) AS bucket
            FROM metrics AS m
            INNER JOIN (
                SELECT run_id, adapter, max(step) AS hi FROM metrics_latest
                WHERE (run_id, adapter) IN {keys:Array(Tuple(String, String))} AND metric = {metric:String}
                GROUP BY run_id, adapter
            ) AS b ON m.run_id = b.run_id AND m.adapter = b.adapter
            WHERE (m.run_id, m.adapter) IN {keys:Array(Tuple(String, String))} AND m.metric = {metric:String}
            GROUP BY run_id, adapter, bucket
            ORDER BY run_id, adapter, bucket
        )
        GROUP BY run_id, adapter
        """,
        {"keys": [tuple(k) for k in keys], "metric": metric, "k": max(1, int(points))},
    )


def curves(store: Store, keys: Sequence[tuple[str, str]], metrics: Sequence[str], max_points: int = 500) -> list[dict]:
    """Several curves in one query: each (run_id, adapter, metric) downsampled to at most
    `max_points` step buckets keeping first step, min, max, last, mean and time, so spikes survive."""
    if not keys or not metrics:
        return []
    return store.query_rows(
        """
        WITH bounds AS (
            SELECT run_id, adapter, metric, min(step) AS s0,
                   greatest(1, intDiv(max(step) - min(step) + {k:UInt64}, {k:UInt64})) AS width
            FROM metrics
            WHERE (run_id, adapter) IN {keys:Array(Tuple(String, String))} AND metric IN {metrics:Array(String)}
            GROUP BY run_id, adapter, metric
        )
        SELECT m.run_id AS run_id, m.adapter AS adapter, m.metric AS metric,
               min(m.step) AS step, min(m.value) AS min, max(m.value) AS max,
               argMax(m.value, m.step) AS last, avg(m.value) AS mean, max(m.ts) AS ts
        FROM metrics AS m
        INNER JOIN bounds AS b ON m.run_id = b.run_id AND m.adapter = b.adapter AND m.metric = b.metric
        WHERE (m.run_id, m.adapter) IN {keys:Array(Tuple(String, String))} AND m.metric IN {metrics:Array(String)}
        GROUP BY run_id, adapter, metric, intDiv(m.step - b.s0, b.width) AS bucket
        ORDER BY run_id, adapter, metric, bucket
        """,
        {"keys": [tuple(k) for k in keys], "metrics": list(metrics), "k": max(1, int(max_points))},
    )


def health_stats(store: Store, run_ids: Sequence[str]) -> list[dict]:
    """Per adapter of the given runs: loss first/min/last, non-finite losses, mean tokens/s, and
    the median and max gradient norm after the first fifth of its steps (the large gradients of a
    fresh adapter are not spikes); the inputs of the console's health flags."""
    return store.query_rows(
        """
        WITH spans AS (
            SELECT run_id, adapter, max(step) AS hi FROM metrics_latest
            WHERE run_id IN {runs:Array(String)} AND metric = 'grad_norm'
            GROUP BY run_id, adapter
        ),
        late AS (
            SELECT g.run_id AS run_id, g.adapter AS adapter,
                   quantile(0.5)(g.value) AS grad_median, max(g.value) AS grad_max
            FROM metrics AS g INNER JOIN spans AS s ON g.run_id = s.run_id AND g.adapter = s.adapter
            WHERE g.run_id IN {runs:Array(String)} AND g.metric = 'grad_norm' AND isFinite(g.value)
              AND g.step * 5 > s.hi
            GROUP BY run_id, adapter
        )
        SELECT a.*, late.grad_median AS grad_median, late.grad_max AS grad_max
        FROM (
            SELECT run_id, adapter,
                   argMinIf(value, step, metric = 'loss' AND isFinite(value)) AS loss_first,
                   minIf(value, metric = 'loss' AND isFinite(value)) AS loss_min,
                   argMaxIf(value, step, metric = 'loss') AS loss_last,
                   countIf(metric = 'loss' AND NOT isFinite(value)) AS loss_nonfinite,
                   avgIf(value, metric = 'tokens_per_s' AND isFinite(value)) AS tokens_per_s
            FROM metrics
            WHERE run_id IN {runs:Array(String)} AND metric IN ('loss', 'tokens_per_s')
            GROUP BY run_id, adapter
        ) AS a
        LEFT JOIN late ON a.run_id = late.run_id AND a.adapter = late.adapter
        ORDER BY run_id, adapter
        """,
        {"runs": list(run_ids)},
    )


def previous_throughput(store: Store, run_id: str) -> list[dict]:
    """For each adapter of `run_id`: the mean tokens/s of the same adapter config in the latest
    earlier run (matched by the config's hash). Rows: adapter, prev_run_id, prev_tokens_per_s."""
    return store.query_rows(
        """
        WITH cur AS (
            SELECT a.adapter AS adapter, cityHash64(a.config) AS h, r.started_at AS started
            FROM adapters AS a FINAL INNER JOIN runs AS r FINAL ON a.run_id = r.run_id
            WHERE a.run_id = {run:String}
        ),
        prev AS (
            SELECT cur.adapter AS adapter, argMax(a.run_id, r.started_at) AS prev_run_id,
                   argMax(a.adapter, r.started_at) AS prev_adapter
            FROM adapters AS a FINAL
            INNER JOIN runs AS r FINAL ON a.run_id = r.run_id
            INNER JOIN cur ON cityHash64(a.config) = cur.h
            WHERE a.run_id != {run:String} AND r.started_at < cur.started
            GROUP BY cur.adapter
        )
        SELECT p.adapter AS adapter, p.prev_run_id AS prev_run_id, avg(m.value) AS prev_tokens_per_s
        FROM metrics AS m
        INNER JOIN prev AS p ON m.run_id = p.prev_run_id AND m.adapter = p.prev_adapter
        WHERE m.run_id IN (SELECT prev_run_id FROM prev) AND m.metric = 'tokens_per_s' AND isFinite(m.value)
        GROUP BY adapter, prev_run_id
        ORDER BY adapter
        """,
        {"run": run_id},
    )
