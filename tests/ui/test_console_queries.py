"""The store queries the console adds (store.metrics.sparklines/curves/health_stats/
previous_throughput) on the real engine, and the config diff helpers."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from lorafleet.store import metrics, runs
from lorafleet.ui.console import data

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _write(store, run_id, adapter, metric, values, start=T0):
    metrics.write_points(
        store, [(run_id, adapter, metric, i + 1, v, start + timedelta(seconds=i)) for i, v in enumerate(values)]
    )


def test_curves_downsample_in_sql_and_keep_a_spike(store):
    values = [1.0] * 1000
    values[537] = 50.0
    _write(store, "r", "a", "grad_norm", values)
    _write(store, "r", "b", "grad_norm", [2.0] * 10)
    rows = metrics.curves(store, [("r", "a"), ("r", "b")], ["grad_norm"], max_points=20)
    a = [r for r in rows if r["adapter"] == "a"]
    assert 1 < len(a) <= 20
    assert max(r["max"] for r in a) == 50.0  # the spike survives inside its bucket
    assert sum(1 for r in rows if r["adapter"] == "b") == 10  # a short curve is not padded


def test_sparklines_one_query_for_many_adapters(store):
    for i in range(5):
        _write(store, "r", f"a{i}", "loss", [10.0 - s / 100 for s in range(300)])
    lines = metrics.sparklines(store, [("r", f"a{i}") for i in range(5)], "loss", points=30)
    assert {r["adapter"] for r in lines} == {f"a{i}" for i in range(5)}
    assert all(len(r["values"]) <= 30 and r["values"][0] > r["values"][-1] for r in lines)


def test_health_stats_and_previous_run_throughput(store):
    config = {"rank": 8, "lr": 0.01}
    for run_id, start, speed in (("old", T0, 1000.0), ("new", T0 + timedelta(days=1), 400.0)):
        runs.upsert_run(store, runs.RunRow(run_id=run_id, started_at=start))
        runs.upsert_adapters(store, [runs.AdapterRow(run_id, "a", "fam", "finished", config=config)])
        _write(store, run_id, "a", "tokens_per_s", [speed] * 10, start)
    _write(store, "new", "a", "loss", [3.0, 2.0, 1.0, math.nan])
    _write(store, "new", "a", "grad_norm", [1.0, 1.0, 1.0, 30.0, 1.0])
    (stats,) = metrics.health_stats(store, ["new"])
    assert (stats["loss_first"], stats["loss_min"], stats["loss_nonfinite"]) == (3.0, 1.0, 1)
    assert math.isnan(stats["loss_last"]) and stats["grad_max"] == 30.0 and stats["tokens_per_s"] == 400.0
    (prev,) = metrics.previous_throughput(store, "new")
    assert (prev["prev_run_id"], prev["prev_tokens_per_s"]) == ("old", 1000.0)
    assert metrics.previous_throughput(store, "old") == []


def test_config_diff_keeps_only_differing_keys():
    a = {"rank": 8, "lr": 0.01, "targets": ["q", "v"], "opt": {"betas": [0.9, 0.99], "wd": 0.0}}
    b = {"rank": 8, "lr": 0.02, "targets": ["q", "v"], "opt": {"betas": [0.9, 0.999], "wd": 0.0}, "dropout": 0.1}
    assert data.differing_keys([a, b]) == ["dropout", "lr", "opt.betas"]
    assert data.differing_keys([a, a]) == []
