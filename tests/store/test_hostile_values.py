"""Hostile names and values are stored and read back exactly; none changes a statement."""

import math
from datetime import UTC, datetime

import pytest

from lorafleet.store import evals, metrics, runs

HOSTILE = [
    "quote'd",
    'double"quote',
    "semi;colon; DROP TABLE metrics; --",
    "../../etc/passwd",
    "back\\slash",
    "{run:String}",
    "ünïcødé-名前-🚀",
    "x" * 10_000,
    "new\nline\ttab",
    "",
]


def test_hostile_strings_round_trip_through_metrics(store):
    now = datetime.now(UTC)
    points = [(name, name, name, i, float(i), now) for i, name in enumerate(HOSTILE)]
    metrics.write_points(store, points)
    for i, name in enumerate(HOSTILE):
        curve = metrics.series(store, name, name, name)
        assert [p["last"] for p in curve] == [float(i)]
    latest = metrics.fleet_latest(store, HOSTILE)
    assert sorted(r["adapter"] for r in latest) == sorted(HOSTILE)
    assert {"metrics", "runs", "evals"} <= {r[0] for r in store.query("SHOW TABLES").result_rows}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324])
def test_special_floats_round_trip(store, value):
    metrics.write_points(store, [("r", "a", "loss", 1, value, datetime.now(UTC))])
    (point,) = metrics.series(store, "r", "a", "loss")
    got = point["last"]
    assert (math.isnan(got) and math.isnan(value)) or (
        got == value and math.copysign(1, got) == math.copysign(1, value)
    )


def test_hostile_strings_round_trip_through_runs_adapters_and_evals(store):
    for name in HOSTILE[:8]:
        runs.upsert_run(store, runs.RunRow(run_id=name, name=name, spec={"k": name}))
        runs.upsert_adapters(store, [runs.AdapterRow(run_id=name, adapter=name, config={"lr": name})])
        evals.write_evals(store, [evals.EvalRow(name, name, 1, name, name, name, 1.0, name, name, name)])
        assert runs.get_run(store, name)["spec"] == {"k": name}
        assert runs.get_adapter(store, name, name)["config"] == {"lr": name}
        assert evals.eval_summary(store, name, name)[0]["suite"] == name
        runs.upsert_adapters(store, [runs.AdapterRow(run_id=name, adapter=name, status="finished")])  # an update
    assert len(runs.list_runs(store)) == 8
    picked = HOSTILE[:3]
    assert runs.adapter_keys(store, picked) == sorted((n, n) for n in picked)  # one key per adapter, in order
