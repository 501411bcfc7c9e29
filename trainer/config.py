"""The fleet spec: one YAML file, validated by pydantic. Unknown keys are errors; every message names the field.

A fleet YAML sets only what differs from these defaults:

    name: demo
    base_model: tiny            # hub id, local path, "tiny" or "tiny-tasks"
    adapters:
      - {name: rev-a, family: text-ops, train_data: "task:reverse", rank: 8}
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorafleet.errors import BadInput
from lorafleet.names import check_name

TASK_PREFIX = "task:"
BUILTIN_TASKS = ("reverse", "sort", "add", "swapcase")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AdapterSpec(_Strict):
    name: str = Field(description="adapter name: letters, digits, '-', '_', '.'")
    family: str = Field(description="registry family this adapter becomes a version of")
    rank: int = Field(8, gt=0, description="LoRA rank r")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; scaling is alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: str | list[str] = Field(
        "all-linear", description="'all-linear', a regex matched against full module names, or a list of suffixes"
    )
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr as a fraction of learning_rate")
    grad_clip: float | None = Field(1.0, gt=0, description="max global grad norm of this adapter; null = no clip")
    batch_size: int = Field(8, gt=0, description="sequences per fleet step")
    max_seq_len: int = Field(128, gt=1)
    max_steps: int | None = Field(None, gt=0)
    epochs: float | None = Field(None, gt=0)
    train_data: str = Field(description="JSONL path (relative to the spec file) or task:<reverse|sort|add|swapcase>")
    train_examples: int = Field(4096, gt=0, description="size of a built-in task's training set")
    eval_data: str | list[str] | None = Field(None, description="held-out sets; default: the task's held-out split")
    eval_examples: int = Field(32, gt=0, description="examples per eval suite")
    eval_metrics: list[str] = Field(default_factory=lambda: ["exact_match", "char_accuracy"])
    eval_every: int = Field(50, ge=0, description="steps between evals; 0 = only at start and end")
    checkpoint_every: int = Field(0, ge=0, description="steps between PEFT checkpoints; 0 = final only")
    early_stopping_patience: int | None = Field(None, gt=0, description="evals without eval_loss improvement")
    early_stopping_min_delta: float = Field(0.0, ge=0, description="how much lower eval_loss must go to count")
    seed: int | None = None

    @field_validator("name", "family")
    @classmethod
    def _valid_name(cls, value: str, info) -> str:
        return _name(value, info.field_name)

    @field_validator("target_modules")
    @classmethod
    def _valid_targets(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            if not value or not all(v.strip() for v in value):
                raise ValueError("must be a non-empty list of module names")
        elif value != "all-linear":
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("train_data")
    @classmethod
    def _valid_data(cls, value: str) -> str:
        _check_data_ref(value)
        return value

    @field_validator("eval_data")
    @classmethod
    def _valid_eval_data(cls, value: str | list[str] | None) -> str | list[str] | None:
        for ref in [value] if isinstance(value, str) else value or []:
            _check_data_ref(ref)
        return value

    @field_validator("eval_metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        from lorafleet.trainer.evals import METRICS

        unknown = [m for m in value if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
        return value

    @model_validator(mode="after")
    def _length_given(self) -> AdapterSpec:
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set max_steps or epochs")
        if self.warmup_steps and self.max_steps and self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps})")
        return self

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def eval_refs(self) -> list[str]:
        if self.eval_data is None:
            return [self.train_data] if self.train_data.startswith(TASK_PREFIX) else []
        return [self.eval_data] if isinstance(self.eval_data, str) else list(self.eval_data)

    def total_steps(self, n_examples: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.epochs * n_examples / self.batch_size))


class FleetSpec(_Strict):
    name: str = Field(description="fleet name, used in run ids")
    base_model: str = Field("tiny", description="hub id, local path, 'tiny' or 'tiny-tasks'")
    device: Literal["cpu", "cuda", "auto"] = "auto"
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"
    seed: int = 0
    threads: int | None = Field(None, gt=0, description="torch CPU threads; default: all cores")
    state_every: int = Field(
        10,
        ge=0,
        description="steps between trainer-state saves for --resume; records wait for the next save "
        "(a resume never repeats one); 0 = never",
    )
    eval_batch_size: int = Field(32, gt=0)
    recompute_activations: bool = Field(
        False,
        description="recompute each block's activations in backward (gradient checkpointing): "
        "much less activation memory for about one more forward pass of compute",
    )
    defaults: dict = Field(
        default_factory=dict, description="adapter fields shared by every adapter unless it sets them"
    )
    adapters: list[AdapterSpec] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, raw: object) -> object:
        if isinstance(raw, dict) and isinstance(raw.get("defaults"), dict) and isinstance(raw.get("adapters"), list):
            merged = [{**raw["defaults"], **a} if isinstance(a, dict) else a for a in raw["adapters"]]
            raw = {**raw, "adapters": merged}
        return raw

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _name(value, "name")

    @model_validator(mode="after")
    def _unique_names(self) -> FleetSpec:
        seen: set[str] = set()
        for adapter in self.adapters:
            if adapter.name in seen:
                raise ValueError(f"duplicate adapter name {adapter.name!r} in adapters")
            seen.add(adapter.name)
        return self


def _name(value: str, what: str) -> str:
    try:
        return check_name(value, what)
    except BadInput as exc:  # pydantic reports ValueErrors with the field's location
        raise ValueError(str(exc)) from None


def _check_data_ref(ref: str) -> None:
    if ref.startswith(TASK_PREFIX) and ref[len(TASK_PREFIX) :] not in BUILTIN_TASKS:
        raise ValueError(f"unknown built-in task {ref!r}; known: {[TASK_PREFIX + t for t in BUILTIN_TASKS]}")
    if not ref.strip():
        raise ValueError("empty data reference")


def _resolve_paths(raw: dict, base_dir: Path) -> dict:
    """Make data paths absolute relative to the spec file, so a resolved spec works from anywhere."""
    for adapter in raw.get("adapters") or []:
        if isinstance(adapter, dict):
            _resolve_adapter_paths(adapter, base_dir)
    return raw


def _resolve_adapter_paths(adapter: dict, base_dir: Path) -> None:
    def fix(ref):
        if isinstance(ref, str) and ref and not ref.startswith(TASK_PREFIX):
            return str((base_dir / ref).resolve())
        return ref

    if "train_data" in adapter:
        adapter["train_data"] = fix(adapter["train_data"])
    if isinstance(adapter.get("eval_data"), list):
        adapter["eval_data"] = [fix(r) for r in adapter["eval_data"]]
    elif "eval_data" in adapter:
        adapter["eval_data"] = fix(adapter["eval_data"])


def _read_yaml(path: Path) -> object:
    if not path.is_file():
        raise BadInput(f"{path}: spec file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise BadInput(f"{path}: not valid YAML: {exc}") from None


def _field_path(loc: tuple, raw: object) -> str:
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            name = node[item].get("name") if isinstance(node, list) and isinstance(node[item], dict) else None
            parts[-1] += f"[{item}]" + (f" ({name})" if name else "")
        else:
            parts.append(str(item))
        node = node[item] if isinstance(node, dict | list) and _has(node, item) else None
    return ".".join(parts) or "spec"


def _has(node, key) -> bool:
    return key in node if isinstance(node, dict) else isinstance(key, int) and 0 <= key < len(node)


def describe_validation_error(exc: ValidationError, raw: object, where: str) -> BadInput:
    lines = []
    for err in exc.errors():
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x in ("function-after", "list[str]", "str")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{_field_path(loc, raw)}: {msg}")
    return BadInput(f"{where}: " + "; ".join(lines))


def _check_files(spec: FleetSpec | AdapterSpec, where: str) -> None:
    adapters = spec.adapters if isinstance(spec, FleetSpec) else [spec]
    for i, adapter in enumerate(adapters):
        refs = [("train_data", adapter.train_data)]
        refs += [("eval_data", ref) for ref in adapter.eval_refs()]
        for field, ref in refs:
            if not ref.startswith(TASK_PREFIX) and not Path(ref).is_file():
                label = f"adapters[{i}] ({adapter.name})." if isinstance(spec, FleetSpec) else ""
                raise BadInput(f"{where}: {label}{field}: data file not found: {ref}")


def load_fleet_spec(path: str | Path) -> FleetSpec:
    """Read and validate a fleet YAML; raise BadInput naming the file and the field."""
    path = Path(path)
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: expected a mapping with 'name' and 'adapters', got {type(raw).__name__}")
    if isinstance(raw.get("defaults"), dict):
        _resolve_adapter_paths(raw["defaults"], path.parent.resolve())
    raw = _resolve_paths(raw, path.parent.resolve())
    spec = _validated(FleetSpec, raw, str(path))
    _check_files(spec, str(path))
    return spec


def load_adapter_spec(path: str | Path) -> AdapterSpec:
    """Read one adapter's YAML (for `lorafleet submit`); same rules as an entry of a fleet's adapters."""
    path = Path(path)
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: expected a mapping describing one adapter")
    _resolve_adapter_paths(raw, path.parent.resolve())
    spec = _validated(AdapterSpec, raw, str(path))
    _check_files(spec, str(path))
    return spec


def spec_from_dict(raw: dict, where: str = "spec") -> FleetSpec:
    return _validated(FleetSpec, raw, where)


def _validated(model: type[_Strict], raw: object, where: str):
    """`model` validated from `raw`, or BadInput naming `where` and the failing field."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise describe_validation_error(exc, raw, where) from None
