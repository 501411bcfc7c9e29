"""`lorafleet train | submit | stop` through the real CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lorafleet.store import open_store
from lorafleet.store.registry import list_versions
from lorafleet.trainer import AdapterSpec, FleetSpec, TrainerCallback, run_fleet
from lorafleet.trainer.control import submit_adapter
from lorafleet.ui.cli import app


def _fleet_yaml(kit, tmp_path):
    (tmp_path / "rows.jsonl").write_text(
        "\n".join(json.dumps({"prompt": f"{i}+1>", "completion": str(i + 1)}) for i in range(20)) + "\nbroken\n"
    )
    data = kit.fleet(kit.adapter("rev", "reverse", eval_every=2, eval_examples=4),
                     kit.adapter("inc", train_data="rows.jsonl", eval_data="rows.jsonl", family="count"))  # fmt: skip
    return kit.write(tmp_path / "fleet.yaml", data)


def test_train_runs_a_fleet_and_writes_peft_adapters(kit, tmp_path, lorafleet_home):
    result = CliRunner().invoke(app, ["train", str(_fleet_yaml(kit, tmp_path)), "--no-telemetry", "--run-id", "r1"])
    assert result.exit_code == 0, result.output
    assert "run r1 finished after 4 steps" in result.output
    assert "rows.jsonl:21" in result.output  # the bad row, reported with file and line
    final = lorafleet_home / "runs/r1/adapters/inc/final"
    assert {p.name for p in final.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "lorafleet.json"}
    meta = json.loads((final / "lorafleet.json").read_text())
    assert meta["step"] == 4 and len(meta["dataset_sha256"]) == 64 and len(meta["base_model_sha256"]) == 64
    assert json.loads((lorafleet_home / "runs/r1/status.json").read_text())["status"] == "finished"
    again = CliRunner().invoke(app, ["train", str(tmp_path / "fleet.yaml"), "--no-telemetry", "--run-id", "r1"])
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.slow
def test_train_with_telemetry_registers_finished_adapters(kit, tmp_path, store_url):
    args = ["train", str(_fleet_yaml(kit, tmp_path)), "--store", store_url, "--no-metrics", "--run-id", "r2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    store = open_store(store_url)
    try:
        assert [v.family for v in list_versions(store, "count")] == ["count"]
        assert len(list_versions(store, "fam")) == 1
    finally:
        store.close()


def test_submit_and_stop_refuse_unknown_or_finished_runs(kit, tmp_path, lorafleet_home):
    spec = kit.write(tmp_path / "one.yaml", kit.adapter("late", "add"))
    missing = CliRunner().invoke(app, ["submit", str(spec), "--run", "nope"])
    assert missing.exit_code == 2 and "run 'nope' not found" in missing.output
    run_fleet(FleetSpec.model_validate(kit.fleet(kit.adapter("a", max_steps=1))), run_id="done")
    finished = CliRunner().invoke(app, ["stop", "done", "a"])
    assert finished.exit_code == 2 and "is finished" in finished.output
    bad = kit.write(tmp_path / "bad.yaml", {**kit.adapter("late"), "rank": 0})
    assert CliRunner().invoke(app, ["submit", str(bad), "--run", "done"]).exit_code == 2


def test_submit_and_stop_change_a_running_fleet(kit, tmp_path, recorder):
    spec = kit.write(tmp_path / "late.yaml", kit.adapter("late", "add", max_steps=2))
    calls = []

    class Operator(TrainerCallback):
        def on_step(self, record):
            if record.step == 1:
                calls.append(CliRunner().invoke(app, ["submit", str(spec), "--run", record.run_id]))
                calls.append(CliRunner().invoke(app, ["stop", record.run_id, "b"]))
                calls.append(CliRunner().invoke(app, ["submit", str(spec), "--run", record.run_id]))

    fleet = FleetSpec.model_validate(kit.fleet(kit.adapter("a", max_steps=4), kit.adapter("b", max_steps=4)))
    result = run_fleet(fleet, callbacks=[recorder, Operator()])
    assert [c.exit_code for c in calls] == [0, 0, 2], [c.output for c in calls]
    assert "already exists" in calls[2].output
    assert result.adapters["b"].status == "stopped" and result.adapters["b"].step == 1
    assert result.adapters["late"].status == "finished" and result.adapters["late"].step == 2
    kinds = [(c.adapter, c.kind) for c in recorder.of("change")]
    assert ("late", "join") in kinds and ("b", "leave") in kinds
    assert [c.final for c in recorder.of("checkpoint") if c.adapter == "b"] == [True]
    with pytest.raises(Exception, match="finished"):
        submit_adapter(result.run_id, AdapterSpec.model_validate(kit.adapter("x")))


def test_early_stopping_stops_an_adapter_whose_eval_loss_stalls(kit, recorder):
    stall = kit.adapter("stall", eval_every=1, max_steps=20, early_stopping_patience=2, early_stopping_min_delta=100.0)
    result = run_fleet(FleetSpec.model_validate(kit.fleet(stall, kit.adapter("go", max_steps=4))), callbacks=[recorder])
    assert result.adapters["stall"].status == "early_stopped" and result.adapters["stall"].step == 2
    change = next(c for c in recorder.of("change") if c.kind == "early_stop")
    assert change.adapter == "stall" and "2 evals" in change.reason
    assert result.adapters["go"].status == "finished"


def test_every_hook_is_called_with_complete_records(kit, recorder):
    spec = kit.fleet(kit.adapter("a", eval_every=2, checkpoint_every=2, eval_metrics=["exact_match"]))
    result = run_fleet(FleetSpec.model_validate(spec), callbacks=[recorder])
    hooks = [h for h, _ in recorder.events]
    assert hooks[0] == "run_start" and hooks[-1] == "run_end"
    run = recorder.of("run_start")[0]
    assert run.adapters[0].config["max_steps"] == 4 and len(run.base_model_sha256) == 64
    steps = recorder.of("step")
    assert [s.step for s in steps] == [1, 2, 3, 4]
    assert set(steps[0].phases) == {"data", "forward", "backward", "optimizer"}
    assert all(s.start_ns <= s.phases["data"][0] <= s.phases["optimizer"][1] <= s.end_ns for s in steps)
    evals = recorder.of("eval")
    assert [e.step for e in evals] == [0, 2, 4] and len(evals[0].examples) == 4
    assert set(evals[0].examples[0].scores) == {"exact_match"} and "perplexity" in evals[0].metrics
    assert [(c.step, c.final) for c in recorder.of("checkpoint")] == [(2, False), (4, True)]
    assert recorder.of("run_end")[0].adapter_status == {"a": "finished"} and result.status == "finished"
