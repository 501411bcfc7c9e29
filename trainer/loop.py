"""The step loop: one forward and one backward per fleet step for every active adapter.

Each step, in order: apply queued joins/leaves, build the mixed batch, forward (per-adapter mean losses),
backward, per-adapter grad norm / quarantine / clip / AdamW, save trainer state, report, evals and checkpoints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch

from lorafleet.trainer.callbacks import AdapterStep, StepRecord, TrainerCallback
from lorafleet.trainer.config import AdapterSpec, FleetSpec
from lorafleet.trainer.session import AdapterRun, FleetRun, RunResult


def lr_at(step: int, spec: AdapterSpec) -> float:
    """Learning rate for 0-based `step`: linear warm-up, then constant, linear or cosine decay to min_lr_ratio."""
    base, total = spec.learning_rate, spec.max_steps or 1
    if step < spec.warmup_steps:
        return base * (step + 1) / spec.warmup_steps
    if spec.schedule == "constant":
        return base
    progress = min(1.0, (step - spec.warmup_steps) / max(1, total - spec.warmup_steps))
    floor = base * spec.min_lr_ratio
    if spec.schedule == "linear":
        return base - (base - floor) * progress
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * progress))


def run_fleet(
    spec: FleetSpec,
    *,
    callbacks: Sequence[TrainerCallback] = (),
    run_id: str | None = None,
    resume: bool = False,
) -> RunResult:
    """Train every adapter of `spec` together on one frozen base; see RunResult for what comes back."""
    if spec.threads:
        torch.set_num_threads(spec.threads)
    run = FleetRun.open(spec, run_id, resume, callbacks)
    if not resume:
        torch.manual_seed(spec.seed)  # after loading: creating the tiny base on first use draws from the RNG
    run.emit("on_run_start", run.run_record())
    try:
        if not resume:
            for adapter in run.active():
                run.evaluate(adapter)  # the step-0 baseline every curve starts from
            run.save_state(force=True)
        while True:
            held = len(run.pending)  # records of earlier steps, waiting for a state save that covers them
            run.apply_control()
            active = run.active()
            if not active:
                break
            run.fleet_step += 1
            step_start = time.time_ns()
            batch = run.next_batch(active)
            t_data = time.time_ns()
            total, per_slot = run.fleet.losses(batch, {a.spec.name: a.step for a in active})
            t_fwd = time.time_ns()
            total.backward()
            t_bwd = time.time_ns()
            records = optimizer_step(run, active, per_slot, batch)
            t_opt = time.time_ns()
            phases = {"data": (step_start, t_data), "forward": (t_data, t_fwd), "backward": (t_fwd, t_bwd),
                      "optimizer": (t_bwd, t_opt)}  # fmt: skip
            run.later("on_step", StepRecord(run.run_id, run.fleet_step, step_start, t_opt, phases, records))
            run.after_step(active)
            eventful = len(run.pending) - held > 1  # evals, checkpoints or fleet changes besides the step record
            run.save_state(force=eventful)  # and emits the records it covers
            if not run.spec.state_every:
                run.flush()
    except KeyboardInterrupt:
        return run.finish("interrupted", "interrupted by the user")
    except Exception as exc:
        run.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    return run.finish("finished")


def optimizer_step(run: FleetRun, active: list[AdapterRun], per_slot: torch.Tensor, batch) -> tuple[AdapterStep, ...]:
    """Per adapter: grad norm before clipping, quarantine on NaN/inf, clip, its own AdamW step."""
    fleet, opt = run.fleet, run.fleet.optimizer
    n = fleet.n_slots
    norms = opt.grad_sq_norms().sqrt()
    losses, norm_values = torch.stack([per_slot.double(), norms]).tolist()  # one sync point for all adapters
    hyper = {k: torch.zeros(n, dtype=torch.float64) for k in ("lr", "wd", "b1", "b2", "steps", "scale", "active")}
    hyper["eps"] = torch.full((n,), 1e-8, dtype=torch.float64)
    records, bad_slots = [], []
    for adapter in active:
        spec, slot = adapter.spec, fleet.slot_of[adapter.spec.name]
        loss, norm = losses[slot], norm_values[slot]
        if not (math.isfinite(loss) and math.isfinite(norm)):
            bad_slots.append(slot)
            run.quarantine(adapter, "loss" if not math.isfinite(loss) else "grad_norm", loss if not math.isfinite(
                loss) else norm)  # fmt: skip
            continue
        lr = lr_at(adapter.step, spec)
        adapter.step += 1
        adapter.last_loss = loss
        clip = min(1.0, spec.grad_clip / (norm + 1e-6)) if spec.grad_clip else 1.0
        for key, value in (("lr", lr), ("wd", spec.weight_decay), ("b1", spec.betas[0]), ("b2", spec.betas[1]),
                           ("steps", adapter.step), ("scale", clip), ("active", 1.0)):  # fmt: skip
            hyper[key][slot] = value
        records.append(AdapterStep(spec.name, adapter.step, loss, norm, lr, batch.tokens[slot], batch.sequences[slot]))
    if bad_slots:
        _zero_slots(opt.layers, bad_slots)  # NaN * 0 is NaN: clear them before the vectorised update
    hyper["steps"].clamp_(min=1)
    opt.step(hyper["lr"], hyper["wd"], hyper["b1"], hyper["b2"], hyper["eps"], hyper["steps"], hyper["scale"],
             hyper["active"])  # fmt: skip
    opt.zero_grad()
    return tuple(records)


def _zero_slots(layers, slots: list[int]) -> None:
    for layer in layers:
        for p in (layer.lora_A, layer.lora_B):
            if p.grad is not None:
                p.grad[slots] = 0
