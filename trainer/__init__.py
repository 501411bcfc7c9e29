"""The concurrent multi-LoRA trainer: N adapters, one frozen base, one forward/backward per step.

    run_fleet(load_fleet_spec("fleet.yaml"), callbacks=[...]) -> RunResult

On disk, under $LORAFLEET_HOME/runs/<run_id>/:
    spec.json                        the resolved fleet spec
    status.json                      run status, each adapter's status, fleet step, pid (read by submit/stop)
    state.pt                         trainer state for --resume (adapter weights + AdamW moments, steps,
                                     data cursors, RNG, early-stopping counters), replaced atomically
    control/                         queued submit/stop commands; control/done/ once applied and saved
    adapters/<name>/checkpoint-<step>/, adapters/<name>/final/
                                     PEFT directories: adapter_config.json, adapter_model.safetensors (PEFT key
                                     names) and lorafleet.json (run, step, family, config, dataset and base sha256),
                                     each written to a temp dir and renamed into place
"""

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
from lorafleet.trainer.config import AdapterSpec, FleetSpec, load_adapter_spec, load_fleet_spec
from lorafleet.trainer.control import stop_adapter, submit_adapter
from lorafleet.trainer.evals import register_metric
from lorafleet.trainer.loop import lr_at, run_fleet
from lorafleet.trainer.session import AdapterResult, RunResult

__all__ = [
    "AdapterInfo",
    "AdapterResult",
    "AdapterSpec",
    "AdapterStep",
    "CheckpointRecord",
    "EvalExample",
    "EvalRecord",
    "FleetChange",
    "FleetSpec",
    "RunEnd",
    "RunRecord",
    "RunResult",
    "StepRecord",
    "TrainerCallback",
    "load_adapter_spec",
    "load_fleet_spec",
    "lr_at",
    "register_metric",
    "run_fleet",
    "stop_adapter",
    "submit_adapter",
]
