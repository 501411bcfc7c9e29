from datetime import UTC, datetime

import numpy as np

from lorafleet.store import evals, metrics


def _write_curve(store, run, adapter, values, metric="loss"):
    n = len(values)
    now = datetime.now(UTC)
    metrics.write_columns(store, [run] * n, [adapter] * n, [metric] * n, np.arange(1, n + 1), values, [now] * n)


def test_downsampled_curve_has_at_most_k_points_and_keeps_spikes(store):
    values = np.full(10_000, 1.0)
    values[7_777] = 50.0  # one spike
    values[2_222] = -3.0  # one dip
    _write_curve(store, "run", "a", values)
    curve = metrics.series(store, "run", "a", "loss", max_points=100)
    assert 50 <= len(curve) <= 100
    assert max(p["max"] for p in curve) == 50.0
    assert min(p["min"] for p in curve) == -3.0
    assert sum(p["points"] for p in curve) == 10_000
    assert curve[-1]["last"] == 1.0
    assert [p["step"] for p in curve] == sorted(p["step"] for p in curve)


def test_short_curve_is_returned_point_for_point(store):
    _write_curve(store, "run", "a", [3.0, 2.0, 1.0])
    assert [(p["step"], p["last"]) for p in metrics.series(store, "run", "a", "loss")] == [(1, 3.0), (2, 2.0), (3, 1.0)]


def test_fleet_latest_is_the_value_at_the_highest_step_for_every_adapter(store):
    for i in range(5):
        _write_curve(store, "run", f"ad{i}", [10.0, 5.0, float(i)])
    _write_curve(store, "run", "ad0", [9.0, 9.0, 9.0, 7.0])  # a later batch extends ad0
    latest = {r["adapter"]: (r["step"], r["value"]) for r in metrics.fleet_latest(store, ["run"], ["loss"])}
    assert latest == {"ad0": (4, 7.0), "ad1": (3, 1.0), "ad2": (3, 2.0), "ad3": (3, 3.0), "ad4": (3, 4.0)}


def test_retried_batch_with_the_same_token_is_stored_once(store):
    now = datetime.now(UTC)
    batch = [("run", "a", "loss", s, 1.0, now) for s in range(100)]
    metrics.write_points(store, batch, dedup_token="batch-1")
    metrics.write_points(store, batch, dedup_token="batch-1")
    metrics.write_points(store, batch[:10], dedup_token="batch-2")  # an overlapping retry under a new token
    assert store.query("SELECT count() FROM metrics").result_rows[0][0] == 110
    assert metrics.count_points(store, "run") == 100


def test_paired_examples_join_two_adapters_example_by_example(store):
    rows = []
    for adapter, step, offset in (("a", 10, 0.0), ("b", 20, 0.5)):
        for i in range(4):
            rows.append(evals.EvalRow("run", adapter, step, "reverse", "exact_match", f"ex{i}", (i % 2) + offset))
    rows.append(evals.EvalRow("run", "a", 10, "reverse", "exact_match", "only-in-a", 1.0))
    evals.write_evals(store, rows)
    pairs = evals.paired_examples(store, ("run", "a", 10), ("run", "b", 20))
    assert [p["example_id"] for p in pairs] == ["ex0", "ex1", "ex2", "ex3"]
    assert all(p["score_b"] - p["score_a"] == 0.5 for p in pairs)
    summary = evals.eval_summary(store, "run", "b")
    assert summary[0]["step"] == 20 and summary[0]["examples"] == 4


def test_dataframe_batches_are_written_like_rows(store):
    import pandas as pd

    df = pd.DataFrame(
        {
            "run_id": ["run"] * 3,
            "adapter": ["a", "b", "a"],
            "metric": ["loss"] * 3,
            "step": [1, 1, 2],
            "value": [0.5, 0.25, 0.125],
            "ts": [datetime.now(UTC)] * 3,
        }
    )
    metrics.write_df(store, df)
    latest = {r["adapter"]: r["value"] for r in metrics.fleet_latest(store, ["run"])}
    assert latest == {"a": 0.125, "b": 0.25}


def test_dataframe_missing_a_column_is_rejected(store):
    import pandas as pd
    import pytest

    with pytest.raises(ValueError, match="step"):
        metrics.write_df(store, pd.DataFrame({"run_id": ["r"], "adapter": ["a"], "metric": ["m"], "value": [1.0]}))
