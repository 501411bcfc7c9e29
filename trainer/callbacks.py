"""The trainer's one observer interface. Telemetry implements it; the trainer knows nothing else.

Every record is a plain frozen dataclass of built-in types, so observers need no torch.
Times are wall-clock nanoseconds (time.time_ns()) so observers can place spans after the fact.
Callbacks run on the training thread: they must return quickly (enqueue, never block on I/O).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    family: str
    config: dict  # the adapter's fully resolved spec (JSON-safe)
    dataset_sha256: str = ""  # sha256 of its training data (file bytes, or the generator's spec)


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    name: str
    spec: dict  # the fully resolved fleet spec (JSON-safe)
    base_model: str  # hub id, local path or "tiny"
    base_model_sha256: str
    adapters: tuple[AdapterInfo, ...]
    output_dir: str  # where checkpoints and trainer state live
    code_revision: str = ""
    resumed_from_step: int = 0  # 0 for a fresh run
    started_ns: int = 0


@dataclass(frozen=True)
class AdapterStep:
    adapter: str
    step: int  # this adapter's own optimizer step (1-based)
    loss: float  # mean over its completion tokens in this step
    grad_norm: float  # before clipping
    learning_rate: float
    tokens: int  # completion + prompt tokens of its sequences in this step
    sequences: int


@dataclass(frozen=True)
class StepRecord:
    run_id: str
    step: int  # fleet step (1-based)
    start_ns: int
    end_ns: int
    # phase name ("data", "forward", "backward", "optimizer") -> (start_ns, end_ns)
    phases: dict[str, tuple[int, int]]
    adapters: tuple[AdapterStep, ...]  # the adapters that took part in this step

    @property
    def tokens(self) -> int:
        return sum(a.tokens for a in self.adapters)

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


@dataclass(frozen=True)
class EvalExample:
    example_id: str
    prompt: str
    reference: str
    output: str
    scores: dict[str, float]  # metric name -> score for this example


@dataclass(frozen=True)
class EvalRecord:
    run_id: str
    adapter: str
    step: int  # the adapter's step when evaluated
    suite: str  # e.g. the task or eval-data name
    metrics: dict[str, float]  # aggregate: eval_loss, perplexity, exact_match, ...
    examples: tuple[EvalExample, ...]
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class CheckpointRecord:
    run_id: str
    adapter: str
    step: int
    path: str  # the PEFT adapter directory (adapter_config.json + adapter_model.safetensors)
    final: bool
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class FleetChange:
    run_id: str
    step: int  # fleet step at which the change took effect
    adapter: str
    kind: str  # "join" | "leave" | "quarantine" | "early_stop" | "finish" | "rejected" (a submit it cannot take)
    reason: str = ""
    value: float | None = None  # e.g. the non-finite loss that caused a quarantine
    adapter_info: AdapterInfo | None = None  # set for "join"
    time_ns: int = 0


@dataclass(frozen=True)
class RunEnd:
    run_id: str
    status: str  # "finished" | "failed" | "interrupted"
    step: int
    end_ns: int
    error: str = ""
    adapter_status: dict[str, str] = field(default_factory=dict)  # adapter -> final status


class TrainerCallback:
    """Override what you need; every hook defaults to doing nothing."""

    def on_run_start(self, run: RunRecord) -> None: ...

    def on_step(self, record: StepRecord) -> None: ...

    def on_eval(self, record: EvalRecord) -> None: ...

    def on_checkpoint(self, record: CheckpointRecord) -> None: ...

    def on_fleet_change(self, change: FleetChange) -> None: ...

    def on_run_end(self, end: RunEnd) -> None: ...
