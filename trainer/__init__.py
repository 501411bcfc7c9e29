"""The concurrent multi-LoRA trainer: N adapters, one frozen base, one forward/backward per step."""

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
