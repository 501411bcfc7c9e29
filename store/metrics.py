"""Per-adapter step signals: batch writes, downsampled curves, the fleet's latest values."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from lorafleet.store.engine import Store

METRIC_COLUMNS = ("run_id", "adapter", "metric", "step", "value", "ts")
_ARROW_SCHEMA = pa.schema(
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
    table = pa.table(
        [
            pa.array(run_id, pa.string()).dictionary_encode(),
            pa.array(adapter, pa.string()).dictionary_encode(),
            pa.array(metric, pa.string()).dictionary_encode(),
            pa.array(np.asarray(step, dtype=np.uint64)),
            pa.array(np.asarray(value, dtype=np.float64)),
            pa.array(ts, pa.timestamp("us", tz="UTC")),
        ],
        schema=_ARROW_SCHEMA,
    )
    store.insert_arrow("metrics", table, dedup_token=dedup_token)


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


def series_many(
    store: Store, keys: Sequence[tuple[str, str]], metric: str, max_points: int = 1000
) -> dict[tuple[str, str], list[dict]]:
    """Downsampled curves for several (run_id, adapter) pairs, keyed by the pair."""
    return {key: series(store, key[0], key[1], metric, max_points) for key in keys}


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


def now() -> datetime:
    return datetime.now(UTC)
