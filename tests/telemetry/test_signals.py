"""Per-adapter signals, evals and run/adapter rows in the store, each exactly once."""

from __future__ import annotations

from lorafleet.store import evals, metrics, runs
from lorafleet.telemetry import STEP_METRICS, Telemetry


def metric_counts(store, run_id: str) -> dict:
    rows = store.query_rows(
        """
        SELECT adapter, metric, count() AS rows, uniqExact(step) AS steps, min(step) AS lo, max(step) AS hi
        FROM metrics WHERE run_id = {run:String} GROUP BY adapter, metric
        """,
        {"run": run_id},
    )
    return {(r["adapter"], r["metric"]): r for r in rows}


def test_every_step_of_every_adapter_has_each_signal_exactly_once(fleet, store_url, store):
    with Telemetry(store_url, flush_interval_s=0.05) as tel:
        fleet.start(tel)
        for s in range(1, 41):
            fleet.step(tel, s, active=fleet.adapters if s % 4 else ("alpha",))  # others skip every 4th step
    counts = metric_counts(store, fleet.run_id)
    for adapter in fleet.adapters:
        own_steps = fleet.adapter_steps[adapter]
        for name in STEP_METRICS:
            row = counts[(adapter, name)]
            # keyed by the adapter's own step: 1..own_steps, each once, no duplicates (no FINAL here)
            assert (row["rows"], row["steps"], row["lo"], row["hi"]) == (own_steps, own_steps, 1, own_steps)
    assert fleet.adapter_steps == {"alpha": 40, "beta": 30, "gamma": 30}


def test_step_signals_carry_the_trainer_values(fleet, store_url, store):
    with Telemetry(store_url) as tel:
        fleet.start(tel)
        record = fleet.step(tel, 1)
    latest = {(r["adapter"], r["metric"]): r["value"] for r in metrics.fleet_latest(store, [fleet.run_id])}
    beta = next(a for a in record.adapters if a.adapter == "beta")
    assert latest[("beta", "loss")] == beta.loss
    assert latest[("beta", "grad_norm")] == beta.grad_norm
    assert latest[("beta", "learning_rate")] == beta.learning_rate
    assert latest[("beta", "tokens")] == 128
    assert latest[("beta", "step_seconds")] == record.duration_s
    assert latest[("beta", "tokens_per_s")] == 128 / record.duration_s


def test_evals_keep_every_example_and_aggregates_become_metrics(fleet, store_url, store):
    with Telemetry(store_url) as tel:
        fleet.start(tel)
        fleet.step(tel, 1)
        fleet.eval(tel, "alpha", examples=4)
        fleet.eval(tel, "alpha", examples=4)  # a second eval at the same step is the same rows again
    summary = {r["metric"]: r for r in evals.eval_summary(store, fleet.run_id, "alpha")}
    assert summary["exact_match"]["examples"] == 4 and summary["exact_match"]["mean"] == 0.5
    assert summary["loss"]["examples"] == 4
    rows = store.query_rows("SELECT prompt, output, reference FROM evals FINAL WHERE example_id = 'ex1' LIMIT 1")
    assert rows == [{"prompt": "prompt 1", "output": "out 1", "reference": "ref 1"}]
    names = metrics.metric_names(store, fleet.run_id)
    assert {"eval/arith/exact_match", "eval/arith/eval_loss"} <= set(names)


def test_run_and_adapter_rows_follow_the_fleet(fleet, store_url, store):
    with Telemetry(store_url) as tel:
        fleet.start(tel)
        running = {r["adapter"]: r["status"] for r in _adapters_after_flush(tel, store, fleet.run_id)}
        assert running == {"alpha": "running", "beta": "running", "gamma": "running"}
        fleet.step(tel, 1)
        fleet.change(tel, 1, "delta", "join")
        fleet.step(tel, 2, active=("alpha", "beta", "gamma", "delta"))
        fleet.checkpoint(tel, "alpha")
        fleet.change(tel, 2, "beta", "quarantine", reason="non-finite loss")
        fleet.change(tel, 2, "gamma", "early_stop", reason="no improvement in 3 evals")
        fleet.change(tel, 2, "delta", "leave", reason="removed by user")
        fleet.change(tel, 2, "epsilon", "rejected", reason="target_modules: ['nope'] matches no module")
        fleet.step(tel, 3, active=("alpha",))
        fleet.end(tel, 3)
    rows = {r["adapter"]: r for r in runs.list_adapters(store, [fleet.run_id])}
    assert {name: r["status"] for name, r in rows.items()} == {
        "alpha": "finished",
        "beta": "quarantined",
        "gamma": "early_stopped",
        "delta": "stopped",
        "epsilon": "rejected",
    }
    assert rows["beta"]["status_reason"] == "non-finite loss"
    assert "matches no module" in rows["epsilon"]["status_reason"]
    assert rows["alpha"]["artifact_path"] == "/tmp/out/alpha/step-2"
    assert rows["alpha"]["step"] == 3 and rows["delta"]["step"] == 1
    assert rows["delta"]["family"] == "fam-delta" and rows["alpha"]["dataset_sha256"] == "sha-alpha"
    assert rows["alpha"]["config"] == {"r": 4, "lr": 1e-3}
    run = runs.get_run(store, fleet.run_id)
    assert run["status"] == "finished" and run["finished_at"] is not None
    assert run["base_model"] == "tiny" and run["spec"] == {"adapters": ["alpha", "beta", "gamma"]}


def _adapters_after_flush(tel, store, run_id):
    assert tel.flush(10)
    return runs.list_adapters(store, [run_id])
