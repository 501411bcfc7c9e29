"""The registry's whole life on adapters really trained by the trainer, driven through the CLI."""

from __future__ import annotations

import getpass
import json
import time
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from lorafleet.ui.cli import app

runner = CliRunner()
FAMILY = "arith"


def _cli(url: str, *args: str, code: int = 0) -> str:
    result = runner.invoke(app, [*args, "--store", url])
    assert result.exit_code == code, (args, result.output)
    return result.stdout


def _moment() -> str:
    time.sleep(0.002)
    moment = datetime.now(UTC).isoformat()
    time.sleep(0.002)
    return moment


def _train(store_url: str) -> str:
    """Two adapters of one family on the tiny base: `good` learns task:add, `slack` barely moves."""
    from lorafleet.telemetry import Telemetry
    from lorafleet.trainer import FleetSpec, run_fleet

    common = {"family": FAMILY, "train_data": "task:add", "max_steps": 40, "eval_every": 0, "eval_examples": 24,
              "batch_size": 8, "rank": 4, "eval_metrics": ["char_accuracy", "exact_match"]}  # fmt: skip
    spec = FleetSpec.model_validate(
        {
            "name": "cycle", "base_model": "tiny", "device": "cpu", "threads": 1, "state_every": 0,
            "adapters": [
                {"name": "good", "learning_rate": 1e-2, "seed": 1, **common},
                {"name": "slack", "learning_rate": 1e-5, "seed": 2, **common},
            ],
        }
    )  # fmt: skip
    telemetry = Telemetry(store_url, flush_interval_s=0.2)
    try:
        result = run_fleet(spec, callbacks=[telemetry])
    finally:
        telemetry.shutdown()
    assert {a.status for a in result.adapters.values()} == {"finished"}
    return result.run_id


@pytest.mark.slow
def test_register_promote_refuse_force_rollback_history_at_resolve_on_trained_adapters(store_url):
    run_id = _train(store_url)
    versions = {v["adapter"]: v for v in json.loads(_cli(store_url, "register", run_id, "--json"))}
    good, slack = versions["good"]["version"], versions["slack"]["version"]
    assert versions["good"]["run_id"] == run_id and versions["good"]["base_model"] == "tiny"
    assert versions["good"]["eval_step"] == 40 and versions["good"]["code_revision"] is not None

    t0 = _moment()
    _cli(store_url, "promote", FAMILY, str(slack), "--alias", "production", "--actor", "alice", "--reason", "launch")
    t1 = _moment()
    passed = json.loads(_cli(store_url, "promote", FAMILY, str(good), "-a", "production", "--actor", "alice",
                             "--reason", "better", "--json"))  # fmt: skip
    assert passed["gate_verdict"] == "pass" and passed["from_version"] == slack
    gain = {r["metric"]: r for r in passed["gate_report"]["rows"]}["char_accuracy"]
    assert gain["delta"] > 0 and gain["ci_low"] > 0, "the trained adapter is measurably better"
    t2 = _moment()

    refused = runner.invoke(app, ["promote", FAMILY, str(slack), "-a", "production", "--store", store_url])
    assert refused.exit_code == 3
    assert f"gate {FAMILY}:{slack} vs {good}: regression" in " ".join(refused.stdout.split())
    assert "REGRESSI" in refused.stdout and f"regression against version {good}" in refused.stderr
    table = json.loads(_cli(store_url, "promote", FAMILY, str(slack), "-a", "production", "--json", code=3))
    assert table["refused"] and {r["metric"] for r in table["report"]["rows"] if r["regression"]} >= {"char_accuracy"}
    forced = json.loads(_cli(store_url, "promote", FAMILY, str(slack), "-a", "production", "--force",
                             "--reason", "needed for a demo", "--actor", "bob", "--json"))  # fmt: skip
    assert forced["gate_verdict"] == "forced-regression"
    t3 = _moment()
    back = json.loads(_cli(store_url, "rollback", FAMILY, "-a", "production", "--reason", "demo over", "--json"))
    assert (back["from_version"], back["to_version"]) == (slack, good)
    t4 = _moment()

    history = json.loads(_cli(store_url, "history", FAMILY, "--alias", "production", "--json"))
    assert [(e["action"], e["to_version"], e["actor"], e["reason"], e["gate_verdict"]) for e in history["events"]] == [
        ("promote", slack, "alice", "launch", "first"),
        ("promote", good, "alice", "better", "pass"),
        ("promote", slack, "bob", "needed for a demo", "forced-regression"),
        ("rollback", good, getpass.getuser(), "demo over", "not-gated"),
    ]
    assert "bob" in _cli(store_url, "history", FAMILY)  # the table too
    at = {t: json.loads(_cli(store_url, "history", FAMILY, "-a", "production", "--at", t, "--json"))
          for t in (t0, t1, t2, t3, t4)}  # fmt: skip
    assert [at[t]["aliases"]["production"] for t in (t0, t1, t2, t3, t4)] == [None, slack, good, slack, good]
    assert len(at[t2]["events"]) == 2

    path = _cli(store_url, "resolve", f"{FAMILY}@production").strip()
    assert path == versions["good"]["artifact_path"]
    _load_with_peft(path)


def _load_with_peft(path: str) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from lorafleet.trainer.base import resolve_base_path

    base = AutoModelForCausalLM.from_pretrained(resolve_base_path("tiny"))
    model = PeftModel.from_pretrained(base, path)
    saved = load_file(f"{path}/adapter_model.safetensors")
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved) > 0
    some_key = sorted(saved)[0]
    match = [v for k, v in loaded.items() if k.replace(".default", "") == some_key]
    assert match and torch.equal(match[0], saved[some_key]), "the loaded weights are the registered ones"
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[5, 6, 7]])).logits).all()
