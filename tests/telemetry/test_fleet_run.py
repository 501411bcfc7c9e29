"""End to end: a short real fleet run (tiny base, built-in tasks) observed by Telemetry."""

from __future__ import annotations

import pytest

from lorafleet.store import runs, traces
from lorafleet.telemetry import STEP_METRICS, Telemetry
from lorafleet.trainer import AdapterSpec, FleetSpec, StepRecord, run_fleet

TASKS = ("task:reverse", "task:sort", "task:add")


def tiny_fleet(steps: int = 5) -> FleetSpec:
    adapters = [
        AdapterSpec(
            name=f"a{i}", family=f"fam{i % 2}", train_data=task, max_steps=steps, eval_examples=4,
            eval_every=0, batch_size=4, max_seq_len=32,
        )
        for i, task in enumerate(TASKS)
    ]  # fmt: skip
    return FleetSpec(name="tele", base_model="tiny", device="cpu", state_every=0, threads=1, adapters=adapters)


@pytest.mark.slow
def test_a_real_fleet_run_leaves_one_trace_and_every_signal_once(store_url, store, recorder, assert_tree):
    with Telemetry(store_url) as tel:
        result = run_fleet(tiny_fleet(), callbacks=[tel, recorder])
    assert tel.hook_errors == 0
    steps = [r for r in recorder.records if isinstance(r, StepRecord)]
    assert steps, "the run took steps"

    [trace_id] = traces.trace_ids_for_run(store, result.run_id)
    spans = traces.trace_spans(store, trace_id)
    assert_tree(store, spans)
    names = [s["SpanName"] for s in spans]
    assert names.count("step") == len(steps)
    for phase in ("data", "forward", "backward", "optimizer"):
        assert names.count(phase) == len(steps)
    assert names.count("checkpoint") >= len(TASKS) and names.count("eval") >= len(TASKS)

    expected = {(a.adapter, a.step) for r in steps for a in r.adapters}
    rows = store.query_rows(
        "SELECT adapter, step, metric, count() AS n FROM metrics "
        "WHERE run_id = {run:String} AND metric NOT LIKE 'eval/%' GROUP BY adapter, step, metric",
        {"run": result.run_id},
    )
    assert {(r["adapter"], r["step"]) for r in rows} == expected
    assert {r["n"] for r in rows} == {1}, "each signal exactly once"
    assert len(rows) == len(expected) * len(STEP_METRICS)

    adapters = runs.list_adapters(store, [result.run_id])
    assert {a["adapter"]: a["status"] for a in adapters} == {"a0": "finished", "a1": "finished", "a2": "finished"}
    assert all(a["artifact_path"] for a in adapters)
    assert runs.get_run(store, result.run_id)["status"] == "finished"
    examples = store.query_rows(
        "SELECT adapter, uniqExact(example_id) AS n FROM evals WHERE run_id = {run:String} GROUP BY adapter",
        {"run": result.run_id},
    )
    assert {r["adapter"]: r["n"] for r in examples} == {"a0": 4, "a1": 4, "a2": 4}
