"""Store benchmark: metric ingest rate, the fleet's latest values, and one downsampled curve.

Fills an embedded store with 1,000 adapters x 10,000 steps through the query layer's write
path (store.metrics.write_columns), then times the two queries the console runs most.
Prints a table, then one JSON line: {"ingest_rows_per_s", "fleet_latest_ms", "curve_ms"}.

    .venv/bin/python bench/store_bench.py [--adapters 1000] [--steps 10000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from lorafleet.store import metrics, open_store

BATCH_ROWS = 500_000
# The baseline the metrics_latest view replaces: scan every point and keep each series' last.
RAW_LATEST = """
    SELECT adapter, metric, max(step), argMax(value, step) FROM metrics
    WHERE run_id = {run:String} GROUP BY adapter, metric
"""


def _batches(adapters: int, steps: int, metric: str = "loss"):
    """Column batches in (adapter, step) order, names as dictionary arrays."""
    names = pa.array([f"adapter-{i:04d}" for i in range(adapters)], pa.string())
    per_batch = max(1, BATCH_ROWS // steps)
    t0 = int(datetime.now(UTC).timestamp() * 1e6)
    rng = np.random.default_rng(0)
    for first in range(0, adapters, per_batch):
        count = min(per_batch, adapters - first)
        n = count * steps
        adapter_idx = np.repeat(np.arange(first, first + count, dtype=np.int32), steps)
        step = np.tile(np.arange(1, steps + 1, dtype=np.uint64), count)
        value = 2.0 / np.sqrt(step) + rng.normal(0, 0.01, n)
        ts = pa.array(t0 + step.astype(np.int64) * 1000, pa.timestamp("us", tz="UTC"))
        yield (
            (
                pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), pa.array(["bench-run"])),
                pa.DictionaryArray.from_arrays(adapter_idx, names),
                pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), pa.array([metric])),
                step,
                value,
                ts,
            ),
            n,
        )


def _timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"chdb://{tmp}/clickhouse")
        with store.session():  # one engine open for the whole bench, as a long-lived writer would
            rates = []
            for columns, n in _batches(args.adapters, args.steps):
                started = time.perf_counter()
                metrics.write_columns(store, *columns)
                rates.append(n / (time.perf_counter() - started))
            total = store.query("SELECT count() FROM metrics").result_rows[0][0]

            latest = _timed(lambda: metrics.fleet_latest(store, ["bench-run"]), 7)
            rows = metrics.fleet_latest(store, ["bench-run"])
            raw = _timed(lambda: store.query(RAW_LATEST, {"run": "bench-run"}), 3)
            curve = _timed(lambda: metrics.series(store, "bench-run", "adapter-0500", "loss", 1000), 21)
            points = metrics.series(store, "bench-run", "adapter-0500", "loss", 1000)

    result = {
        "ingest_rows_per_s": round(statistics.median(rates)),
        "fleet_latest_ms": round(statistics.median(latest) * 1000, 2),
        "curve_ms": round(statistics.median(curve) * 1000, 2),
    }
    table = Table(title=f"store bench: {args.adapters} adapters x {args.steps} steps = {total:,} rows (embedded chDB)")
    for column in ("measure", "median", "goal", "detail"):
        table.add_column(column)
    table.add_row("ingest", f"{result['ingest_rows_per_s']:,} rows/s", ">= 1,000,000", f"{len(rates)} batches")
    table.add_row("fleet latest", f"{result['fleet_latest_ms']} ms", "<= 300 ms", f"{len(rows)} adapters, 7 runs")
    table.add_row(
        "fleet latest, raw scan",
        f"{statistics.median(raw) * 1000:.1f} ms",
        "(baseline)",
        "argMax over all rows, 3 runs",
    )
    table.add_row("curve", f"{result['curve_ms']} ms", "<= 50 ms", f"{len(points)} points, 21 runs")
    Console().print(table)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
