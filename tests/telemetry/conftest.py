"""Synthetic trainer records for telemetry tests: the same record types, in the same order and
shape, as trainer/loop.py hands its callbacks (until a real fleet run is cheap enough)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from lorafleet.trainer.callbacks import (
    AdapterInfo,
    AdapterStep,
    CheckpointRecord,
    EvalExample,
    EvalRecord,
    FleetChange,
    RunEnd,
    RunRecord,
    StepRecord,
    TrainerCallback,
)

PHASES = ("data", "forward", "backward", "optimizer")


@dataclass
class SyntheticFleet:
    """Drives a TrainerCallback through a fleet run: start, steps, evals, checkpoints, end."""

    run_id: str = "run-synth"
    adapters: tuple[str, ...] = ("alpha", "beta", "gamma")
    clock: int = field(default_factory=time.time_ns)
    adapter_steps: dict = field(default_factory=dict)

    def tick(self, ns: int = 1_000_000) -> int:
        self.clock += ns
        return self.clock

    def start(self, cb) -> RunRecord:
        infos = tuple(
            AdapterInfo(name=a, family=f"fam-{a}", config={"r": 4, "lr": 1e-3}, dataset_sha256=f"sha-{a}")
            for a in self.adapters
        )
        run = RunRecord(
            run_id=self.run_id,
            name="synthetic",
            spec={"adapters": list(self.adapters)},
            base_model="tiny",
            base_model_sha256="base-sha",
            adapters=infos,
            output_dir="/tmp/out",
            started_ns=self.tick(),
        )
        cb.on_run_start(run)
        return run

    def step(self, cb, fleet_step: int, active: tuple[str, ...] | None = None, loss: float | None = None):
        start = self.tick()
        phases = {}
        for phase in PHASES:
            phases[phase] = (self.tick(100_000), self.tick(400_000))
        end = self.tick(100_000)
        rows = []
        for i, name in enumerate(active or self.adapters):
            step = self.adapter_steps.get(name, 0) + 1
            self.adapter_steps[name] = step
            value = loss if loss is not None else 2.0 / (step + i)
            rows.append(AdapterStep(name, step, value, 0.5 + i, 1e-3, tokens=128, sequences=4))
        record = StepRecord(self.run_id, fleet_step, start, end, phases, tuple(rows))
        cb.on_step(record)
        return record

    def eval(self, cb, adapter: str, examples: int = 3) -> EvalRecord:
        start = self.tick()
        exs = tuple(
            EvalExample(f"ex{i}", f"prompt {i}", f"ref {i}", f"out {i}", {"exact_match": float(i % 2), "loss": 0.1 * i})
            for i in range(examples)
        )
        record = EvalRecord(
            self.run_id, adapter, self.adapter_steps.get(adapter, 0), "arith",
            {"exact_match": 0.5, "eval_loss": 0.25}, exs, start, self.tick(),
        )  # fmt: skip
        cb.on_eval(record)
        return record

    def checkpoint(self, cb, adapter: str, final: bool = False) -> CheckpointRecord:
        start = self.tick()
        step = self.adapter_steps.get(adapter, 0)
        record = CheckpointRecord(
            self.run_id, adapter, step, f"/tmp/out/{adapter}/step-{step}", final, start, self.tick()
        )
        cb.on_checkpoint(record)
        return record

    def change(self, cb, fleet_step: int, adapter: str, kind: str, reason: str = "", value=None) -> FleetChange:
        info = AdapterInfo(adapter, f"fam-{adapter}", {"r": 8}, "sha-late") if kind == "join" else None
        change = FleetChange(self.run_id, fleet_step, adapter, kind, reason, value, info, self.tick())
        cb.on_fleet_change(change)
        return change

    def end(self, cb, fleet_step: int, status: str = "finished") -> RunEnd:
        end = RunEnd(self.run_id, status, fleet_step, self.tick())
        cb.on_run_end(end)
        return end

    def run(self, cb, steps: int) -> None:
        """A plain run: every adapter trains `steps` steps, one eval and a final checkpoint each."""
        self.start(cb)
        for s in range(1, steps + 1):
            self.step(cb, s)
        for name in self.adapters:
            self.eval(cb, name)
            self.checkpoint(cb, name, final=True)
        self.end(cb, steps)


@pytest.fixture
def fleet() -> SyntheticFleet:
    return SyntheticFleet()


class Recorder(TrainerCallback):
    """Keeps every record it is given, in order."""

    def __init__(self):
        self.records: list = []

    def on_run_start(self, run):
        self.records.append(run)

    def on_step(self, record):
        self.records.append(record)

    def on_eval(self, record):
        self.records.append(record)

    def on_checkpoint(self, record):
        self.records.append(record)

    def on_fleet_change(self, change):
        self.records.append(change)

    def on_run_end(self, end):
        self.records.append(end)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def assert_consistent_tree(store, spans: list[dict]) -> dict[str, dict]:
    """Every parent exists in the trace, there is one root, and children lie inside their parent."""
    by_id = {s["SpanId"]: s for s in spans}
    starts = _start_ns(store, spans[0]["TraceId"])
    assert len(by_id) == len(spans), "span ids are unique"
    roots = [s for s in spans if s["ParentSpanId"] == ""]
    assert len(roots) == 1, f"one root span, got {[r['SpanName'] for r in roots]}"
    for span in spans:
        if span["ParentSpanId"]:
            parent = by_id.get(span["ParentSpanId"])
            assert parent is not None, f"{span['SpanName']} has a missing parent"
            start, end = starts[span["SpanId"]], starts[span["SpanId"]] + span["Duration"]
            p_start, p_end = starts[parent["SpanId"]], starts[parent["SpanId"]] + parent["Duration"]
            assert p_start <= start and end <= p_end, f"{span['SpanName']} lies outside its {parent['SpanName']}"
    return by_id


def _start_ns(store, trace_id: str) -> dict[str, int]:
    """Start times in nanoseconds (Python datetimes stop at microseconds)."""
    rows = store.query_rows(
        "SELECT SpanId, toUnixTimestamp64Nano(Timestamp) AS ns FROM otel_traces WHERE TraceId = {t:String}",
        {"t": trace_id},
    )
    return {r["SpanId"]: int(r["ns"]) for r in rows}


@pytest.fixture
def assert_tree():
    return assert_consistent_tree
