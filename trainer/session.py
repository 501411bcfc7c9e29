"""One fleet run's bookkeeping: adapters and their streams, evals, checkpoints, fleet changes, trainer state.

loop.py drives it; everything here is a small named step the loop calls. Records for a step are buffered and
handed to the callbacks only after that step's trainer state is on disk, so a crash and `--resume` neither
drop nor repeat a step record.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import subprocess
import time
import zlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from lorafleet import lorafleet_home
from lorafleet.errors import BadInput, NotFound
from lorafleet.names import check_name
from lorafleet.trainer import control
from lorafleet.trainer.base import base_sha256, load_base, pick_device
from lorafleet.trainer.callbacks import (
    AdapterInfo,
    CheckpointRecord,
    EvalExample,
    EvalRecord,
    FleetChange,
    RunEnd,
    RunRecord,
)
from lorafleet.trainer.config import AdapterSpec, FleetSpec, spec_from_dict
from lorafleet.trainer.data import Dataset, DatasetCache, DataStream, collate
from lorafleet.trainer.evals import evaluate
from lorafleet.trainer.fleet import Fleet, write_json_atomic

log = logging.getLogger("lorafleet.trainer")


@dataclass
class AdapterRun:
    spec: AdapterSpec
    info: AdapterInfo
    stream: DataStream
    suites: list[tuple[str, Dataset]]
    total_steps: int
    seed: int
    step: int = 0
    status: str = "active"
    best_loss: float = math.inf
    bad_evals: int = 0
    last_loss: float | None = None
    last_eval: dict = field(default_factory=dict)
    final_checkpoint: str | None = None
    warnings: list[str] = field(default_factory=list)

    def progress(self) -> dict:
        keys = ("step", "status", "best_loss", "bad_evals", "last_loss", "last_eval", "final_checkpoint", "seed")
        return {k: getattr(self, k) for k in keys} | {"cursor": self.stream.cursor()}


@dataclass(frozen=True)
class AdapterResult:
    name: str
    family: str
    status: str  # finished | stopped | early_stopped | quarantined | active (run interrupted)
    step: int
    final_checkpoint: str | None
    metrics: dict  # the last eval's aggregates, by suite


@dataclass(frozen=True)
class RunResult:
    run_id: str
    output_dir: str
    status: str  # finished | failed | interrupted
    steps: int
    adapters: dict[str, AdapterResult]
    warnings: tuple[str, ...] = ()


def new_run_id(name: str) -> str:
    return check_name(f"{name[:40]}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}", "run id")


def adapter_seed(fleet_seed: int, spec: AdapterSpec) -> int:
    """Each adapter's own seed (init, data order): independent of which other adapters share the fleet."""
    return spec.seed if spec.seed is not None else zlib.crc32(f"{fleet_seed}:{spec.name}".encode())


def code_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


class FleetRun:
    def __init__(self, spec: FleetSpec, run_id: str, callbacks, resume: bool):
        self.spec, self.run_id, self.callbacks = spec, run_id, list(callbacks)
        self.dir = lorafleet_home() / "runs" / run_id
        self.device = pick_device(spec.device)
        model, tokenizer = load_base(spec.base_model, spec.dtype, self.device)
        self.fleet = Fleet(model, tokenizer, spec.base_model)
        self.datasets = DatasetCache(tokenizer)
        if spec.recompute_activations:
            self.fleet.recompute_activations()
        self.base_sha256 = base_sha256(spec.base_model)
        self.adapters: dict[str, AdapterRun] = {}
        self.fleet_step = 0
        self.resumed_from = 0
        self.pending: list[tuple[str, object]] = []  # records waiting for a saved state that covers them
        self.applied_commands: list[Path] = []  # control files applied since the last state save
        self.seen_commands: set[Path] = set()  # every control file applied in this process
        self.started_ns = time.time_ns()

    # -- opening -----------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, spec: FleetSpec, run_id: str | None, resume: bool, callbacks) -> FleetRun:
        """Validate everything (base, targets, data) before anything is written under runs/."""
        if resume:
            if not run_id:
                raise BadInput("resume: a run id is required")
            state = _load_state(run_id)
            spec = spec_from_dict(state["spec"], f"run {run_id} spec")
            run = cls(spec, run_id, callbacks, resume=True)
            run._restore(state)
            return run
        run_id = check_name(run_id, "run id") if run_id else new_run_id(spec.name)
        if (lorafleet_home() / "runs" / run_id).exists():
            raise BadInput(f"run id: {run_id!r} already exists; use --resume {run_id} to continue it")
        run = cls(spec, run_id, callbacks, resume=False)
        for spec_a in spec.adapters:
            run._join(spec_a, announce=False)
        run.dir.mkdir(parents=True)
        write_json_atomic(run.dir / "spec.json", spec.model_dump(mode="json"))
        run.write_status("running")
        return run

    def _build_adapter(self, spec: AdapterSpec) -> AdapterRun:
        seed, load = adapter_seed(self.spec.seed, spec), self.datasets.load
        self.fleet.resolve_targets(spec)
        try:
            train = load(spec.train_data, spec.max_seq_len, n=spec.train_examples, seed=seed % 10_000)
            suites = [
                (_suite_name(ref), load(ref, spec.max_seq_len, n=spec.eval_examples, seed=seed % 10_000, split="eval"))
                for ref in spec.eval_refs()
            ]
        except BadInput as exc:
            raise BadInput(f"adapter {spec.name}: train_data/eval_data: {exc}") from None
        total = spec.total_steps(len(train.examples))
        resolved = spec.model_copy(update={"max_steps": total})
        warnings = [f"adapter {spec.name}: {len(d.bad_rows)} bad rows in {d.source}, e.g. {d.bad_rows[0]}"
                    for d in [train] + [s for _, s in suites] if d.bad_rows]  # fmt: skip
        for w in warnings:
            log.warning(w)
        info = AdapterInfo(spec.name, spec.family, resolved.model_dump(mode="json"), train.sha256)
        stream = DataStream(train, spec.batch_size, seed)
        return AdapterRun(resolved, info, stream, suites, total, seed, warnings=warnings)

    def _join(self, spec: AdapterSpec, announce: bool = True) -> AdapterRun:
        adapter = self._build_adapter(spec)
        self.fleet.add(adapter.spec, adapter.seed)
        self.adapters[spec.name] = adapter
        if announce:
            self._change(spec.name, "join", adapter_info=adapter.info)
        return adapter

    # -- records ------------------------------------------------------------------------------------------------
    def emit(self, hook: str, record) -> None:
        for callback in self.callbacks:
            try:
                getattr(callback, hook)(record)
            except Exception:  # an observer must never stop training
                log.exception("callback %s.%s failed", type(callback).__name__, hook)

    def later(self, hook: str, record) -> None:
        self.pending.append((hook, record))

    def flush(self) -> None:
        """Emit the pending records; only once a saved state covers them, unless nothing is resumable."""
        pending, self.pending = self.pending, []
        for hook, record in pending:
            self.emit(hook, record)

    def _change(self, adapter: str, kind: str, reason: str = "", value=None, adapter_info=None) -> None:
        change = FleetChange(self.run_id, self.fleet_step, adapter, kind, reason, value, adapter_info, time.time_ns())
        self.later("on_fleet_change", change)

    def run_record(self) -> RunRecord:
        return RunRecord(
            run_id=self.run_id,
            name=self.spec.name,
            spec=self.spec.model_dump(mode="json"),
            base_model=self.spec.base_model,
            base_model_sha256=self.base_sha256,
            adapters=tuple(a.info for a in self.adapters.values()),
            output_dir=str(self.dir),
            code_revision=code_revision(),
            resumed_from_step=self.resumed_from,
            started_ns=self.started_ns,
        )

    # -- the fleet at a step boundary ------------------------------------------------------------------------------
    def active(self) -> list[AdapterRun]:
        return [a for a in self.adapters.values() if a.status == "active"]

    def apply_control(self) -> None:
        for path, command in control.pending_commands(self.dir):
            if path in self.seen_commands:  # applied already; its file is marked done with the next saved state
                continue
            self.seen_commands.add(path)
            try:
                # a command applied just before a crash is seen again on resume: apply each one once
                if command["action"] == "submit" and command["adapter"]["name"] not in self.adapters:
                    self._join(AdapterSpec.model_validate(command["adapter"]))
                elif command["action"] == "stop" and self.adapters.get(command["adapter"], None) in self.active():
                    self.retire(self.adapters[command["adapter"]], "stopped", "leave", "stopped by request")
            except (BadInput, ValueError) as exc:
                log.warning("control command %s rejected: %s", path.name, exc)
                self._reject(command, exc)
            self.applied_commands.append(path)

    def _reject(self, command: dict, exc: Exception) -> None:
        """Report a submitted adapter the fleet cannot take, so `lorafleet adapters` and the console show why."""
        name = command.get("adapter", {}).get("name") if command.get("action") == "submit" else None
        try:
            check_name(name, "adapter name")
        except BadInput:
            return  # not even a valid name: the log line above is all there is to say
        self._change(name, "rejected", str(exc))

    def next_batch(self, active: list[AdapterRun]):
        groups = [(self.fleet.slot_of[a.spec.name], a.stream.next_batch()) for a in active]
        return collate(groups, self.fleet.tokenizer.pad_token_id, self.device)

    def retire(self, adapter: AdapterRun, status: str, kind: str, reason: str = "", value=None) -> None:
        """Take an adapter out of the fleet: final eval and checkpoint (unless quarantined), then free its slot."""
        if status != "quarantined":
            if adapter.last_eval.get("_step") != adapter.step:
                self.evaluate(adapter)
            adapter.final_checkpoint = self.checkpoint(adapter, final=True)
        adapter.status = status
        self._change(adapter.spec.name, kind, reason, value)
        self.fleet.remove(adapter.spec.name)

    def evaluate(self, adapter: AdapterRun) -> None:
        spec, name = adapter.spec, adapter.spec.name
        for suite, data in adapter.suites:
            start = time.time_ns()
            res = evaluate(self.fleet, name, suite, data, spec.eval_metrics, spec.eval_examples,
                           self.spec.eval_batch_size)  # fmt: skip
            examples = tuple(EvalExample(**row) for row in res.examples)
            self.later("on_eval", EvalRecord(self.run_id, name, adapter.step, suite, res.metrics, examples, start,
                                             time.time_ns()))  # fmt: skip
            adapter.last_eval[suite] = res.metrics
        adapter.last_eval["_step"] = adapter.step
        if adapter.suites:
            self._early_stopping(adapter, adapter.last_eval[adapter.suites[0][0]]["eval_loss"])

    def _early_stopping(self, adapter: AdapterRun, loss: float) -> None:
        if loss < adapter.best_loss - adapter.spec.early_stopping_min_delta:
            adapter.best_loss, adapter.bad_evals = loss, 0
            return
        adapter.bad_evals += 1
        patience = adapter.spec.early_stopping_patience
        if patience and adapter.bad_evals >= patience and adapter.status == "active":
            self.retire(adapter, "early_stopped", "early_stop", f"no eval_loss improvement in {patience} evals", loss)

    def checkpoint(self, adapter: AdapterRun, final: bool) -> str:
        start, name = time.time_ns(), adapter.spec.name
        where = self.dir / "adapters" / name / ("final" if final else f"checkpoint-{adapter.step}")
        meta = {
            "run_id": self.run_id,
            "step": adapter.step,
            "base_model_sha256": self.base_sha256,
            **asdict(adapter.info),
        }
        self.fleet.save_peft(name, where, meta)
        self.later("on_checkpoint", CheckpointRecord(self.run_id, name, adapter.step, str(where), final, start,
                                                     time.time_ns()))  # fmt: skip
        return str(where)

    def after_step(self, active: list[AdapterRun]) -> None:
        for adapter in active:
            if adapter.status != "active":
                continue  # quarantined in this step
            spec = adapter.spec
            if adapter.step >= adapter.total_steps:
                self.retire(adapter, "finished", "finish", f"reached {adapter.total_steps} steps")
                continue
            if spec.eval_every and adapter.step % spec.eval_every == 0:
                self.evaluate(adapter)
            if adapter.status == "active" and spec.checkpoint_every and adapter.step % spec.checkpoint_every == 0:
                self.checkpoint(adapter, final=False)

    def quarantine(self, adapter: AdapterRun, what: str, value: float) -> None:
        log.warning("adapter %s quarantined at step %d: %s = %s", adapter.spec.name, adapter.step + 1, what, value)
        self.retire(adapter, "quarantined", "quarantine", f"non-finite {what} at step {adapter.step + 1}", value)

    # -- trainer state ----------------------------------------------------------------------------------------------
    def save_state(self, force: bool = False) -> None:
        """Write what --resume needs every `state_every` steps (or when forced), then emit the records it covers:
        a resume never repeats a record. With state_every 0 nothing is resumable and the loop emits at once."""
        every = self.spec.state_every
        if not force and not (every and self.fleet_step % every == 0):
            return
        self._write_state(self._snapshot())
        control.mark_done(self.applied_commands)
        self.applied_commands = []
        self.write_status("running")
        self.flush()

    def _snapshot(self) -> dict:
        return {
            "run_id": self.run_id,
            "fleet_step": self.fleet_step,
            "spec": self.spec.model_dump(mode="json"),
            "base_model_sha256": self.base_sha256,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "adapters": {
                name: {
                    "spec": a.spec.model_dump(mode="json"),
                    "progress": a.progress(),
                    "tensors": self.fleet.packed_state(name) if name in self.fleet.slot_of else None,
                }
                for name, a in self.adapters.items()
            },
        }

    def _write_state(self, state: dict) -> None:
        tmp = self.dir / f".state.pt.tmp-{secrets.token_hex(4)}"
        torch.save(state, tmp)
        os.replace(tmp, self.dir / "state.pt")  # atomic: a crash leaves the previous state intact

    def _restore(self, state: dict) -> None:
        if state["base_model_sha256"] != self.base_sha256:
            raise BadInput(f"resume: base model {self.spec.base_model!r} changed since run {self.run_id} started")
        self.fleet_step = self.resumed_from = state["fleet_step"]
        for name, saved in state["adapters"].items():
            spec = AdapterSpec.model_validate(saved["spec"])
            adapter = self._build_adapter(spec)
            progress = saved["progress"]
            for key, value in progress.items():
                if key != "cursor":
                    setattr(adapter, key, value)
            adapter.stream.restore(progress["cursor"])
            self.adapters[name] = adapter
            if adapter.status == "active":
                self.fleet.add(adapter.spec, adapter.seed)
                self.fleet.load_packed_state(name, saved["tensors"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])  # LoRA dropout on a GPU draws from these
        self.write_status("running")

    def write_status(self, status: str) -> None:
        adapters = {name: a.status for name, a in self.adapters.items()}
        write_json_atomic(self.dir / "status.json", {"run_id": self.run_id, "status": status, "adapters": adapters,
                                                      "fleet_step": self.fleet_step, "pid": os.getpid()})  # fmt: skip

    def finish(self, status: str, error: str = "") -> RunResult:
        if status == "finished":
            self.save_state(force=True)
        else:
            self.pending = []  # records of steps whose state was not saved: --resume redoes those steps
        self.write_status(status)
        end = RunEnd(self.run_id, status, self.fleet_step, time.time_ns(), error,
                     {n: a.status for n, a in self.adapters.items()})  # fmt: skip
        self.emit("on_run_end", end)
        adapters = {
            n: AdapterResult(n, a.spec.family, a.status, a.step, a.final_checkpoint,
                             {k: v for k, v in a.last_eval.items() if k != "_step"})
            for n, a in self.adapters.items()
        }  # fmt: skip
        warnings = tuple(w for a in self.adapters.values() for w in a.warnings)
        return RunResult(self.run_id, str(self.dir), status, self.fleet_step, adapters, warnings)


def _suite_name(ref: str) -> str:
    return ref.split(":", 1)[1] if ref.startswith("task:") else Path(ref).stem


def _load_state(run_id: str) -> dict:
    path = lorafleet_home() / "runs" / check_name(run_id, "run id") / "state.pt"
    if not path.is_file():
        raise NotFound(f"resume: run {run_id!r} has no trainer state ({path})")
    return torch.load(path, weights_only=False)
