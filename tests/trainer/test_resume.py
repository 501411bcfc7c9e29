"""`--resume` after a SIGKILL continues exactly: same adapter weights, no step record missing or repeated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorafleet.trainer import TrainerCallback, run_fleet
from lorafleet.trainer.config import spec_from_dict

WORKER = Path(__file__).with_name("resume_worker.py")
K = 4


def _run(spec_path, run_id, log, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(WORKER), str(spec_path), run_id, str(log), *extra], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


class StepLog(TrainerCallback):
    """The same log the worker writes, for the straight run in this process."""

    def __init__(self, path):
        self.path = path

    def on_step(self, record):
        with open(self.path, "a") as fh:
            for a in record.adapters:
                fh.write(json.dumps({"step": record.step, "adapter": a.adapter, "loss": a.loss}) + "\n")


def _log(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("state_every", "crash"),
    [(1, ["--kill-at", str(K)]),  # in a callback, right after step K's state was saved
     (3, ["--crash-in-step", str(K + 1)])],  # mid-step, two steps after the last save (at step 3)
)  # fmt: skip
def test_resume_after_sigkill_matches_a_straight_run(kit, tmp_path, lorafleet_home, state_every, crash):
    spec = kit.fleet(
        kit.adapter("drop", "reverse", max_steps=2 * K, dropout=0.1, eval_every=3, checkpoint_every=3),
        kit.adapter("wide", "sort", max_steps=2 * K, batch_size=3, rank=8, warmup_steps=2),
        state_every=state_every,
    )
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    run_fleet(spec_from_dict(spec), callbacks=[StepLog(tmp_path / "straight.jsonl")], run_id="straight")
    crashed = _run(spec_path, "crashy", tmp_path / "crashy.jsonl", *crash)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    assert not (lorafleet_home / "runs/crashy/adapters/drop/final").exists()
    resumed = _run(spec_path, "crashy", tmp_path / "crashy.jsonl", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    want, got = _log(tmp_path / "straight.jsonl"), _log(tmp_path / "crashy.jsonl")
    assert [(r["step"], r["adapter"]) for r in got] == [(r["step"], r["adapter"]) for r in want]
    assert sorted({r["step"] for r in got}) == list(range(1, 2 * K + 1))
    for a, b in zip(want, got, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-7)
    for name in ("drop", "wide"):
        final = f"adapters/{name}/final/adapter_model.safetensors"
        w, g = load_file(lorafleet_home / "runs/straight" / final), load_file(lorafleet_home / "runs/crashy" / final)
        for key in w:
            torch.testing.assert_close(g[key], w[key], rtol=1e-6, atol=1e-7)
    status = json.loads((lorafleet_home / "runs/crashy/status.json").read_text())
    assert status["status"] == "finished" and status["fleet_step"] == 2 * K
