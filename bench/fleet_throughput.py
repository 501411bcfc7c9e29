"""Fleet trainer vs sequential PEFT vs the single-adapter limit, on one base, the same adapters, data and steps.

(a) fleet: `run_fleet` with N adapters x b sequences per step (one forward/backward for all of them);
(b) peft: the same N adapters trained one after another with get_peft_model and a plain AdamW loop;
(c) limit: one PEFT adapter at the fleet's total batch N*b, the FLOPs of one fleet step in one plain step;
(a') the fleet again with recompute_activations (block activations recomputed in backward).
Regimes: small (16 x 1 x 64 tokens) and large (16 x 4 x 128). Peak RSS of a 16-adapter fleet (with and without
recomputation) vs a 1-adapter fleet (same per-adapter batch) and vs a 1-adapter fleet at the 16x batch (same
tokens) is measured in child processes (VmHWM of each); the recomputing ratio is measured again with glibc
unmapping freed buffers, which shows the memory live rather than kept by the allocator. Each throughput is the
best of interleaved rounds (this CPU is shared).
Last stdout line: one JSON object.

usage: python bench/fleet_throughput.py [--threads 1] [--rounds 3] [--small-steps 15] [--large-steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

BENCH_CONFIG = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=4)  # fmt: skip  # ~3.3M parameters, the design's measured base
RANK, ALPHA, WARMUP = 8, 16, 2
REGIMES = {"small": (16, 1, 64), "large": (16, 4, 128)}  # adapters, sequences per adapter per step, tokens


def build_base(directory: Path) -> str:
    from lorafleet.trainer.base import build_tiny

    model, tok = build_tiny(seed=0, **BENCH_CONFIG)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


def write_data(directory: Path, tokens: int, rows: int = 512) -> str:
    rng = random.Random(0)
    path = directory / f"text-{tokens}.jsonl"
    with path.open("w") as fh:
        for _ in range(rows):  # bos + text + eos = exactly `tokens` tokens with the byte tokenizer
            fh.write(json.dumps({"text": "".join(rng.choice("abcdefghij klmnop") for _ in range(tokens - 2))}) + "\n")
    return str(path)


def fleet_spec(base: str, data: str, adapters: int, batch: int, tokens: int, steps: int, threads: int,
               recompute: bool = False):  # fmt: skip
    from lorafleet.trainer import FleetSpec

    return FleetSpec.model_validate({
        "name": "bench", "base_model": base, "device": "cpu", "threads": threads, "state_every": 0,
        "recompute_activations": recompute,
        "adapters": [{"name": f"a{i}", "family": "bench", "train_data": data, "rank": RANK, "alpha": ALPHA,
                      "batch_size": batch, "max_seq_len": tokens, "max_steps": steps, "eval_every": 0,
                      "learning_rate": 1e-3} for i in range(adapters)],
    })  # fmt: skip


def bench_fleet(base, data, adapters, batch, tokens, steps, threads, recompute=False) -> float:
    """Tokens/s over full loop iterations (step end to step end), after WARMUP steps."""
    from lorafleet.trainer import TrainerCallback, run_fleet

    marks: list[tuple[int, int]] = []

    class Clock(TrainerCallback):
        def on_step(self, record):
            marks.append((record.end_ns, record.tokens))

    run_fleet(fleet_spec(base, data, adapters, batch, tokens, steps + WARMUP, threads, recompute), callbacks=[Clock()])
    timed = marks[WARMUP:]
    return sum(t for _, t in timed) / ((timed[-1][0] - marks[WARMUP - 1][0]) / 1e9)


def _peft_steps(model, examples, batch: int, steps: int) -> tuple[int, float]:
    """A plain PEFT loop; returns (tokens, seconds) over the steps after the first."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    tokens, start = 0, None
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        rows = examples[step * batch : (step + 1) * batch]
        ids = torch.tensor([ex.input_ids for ex in rows])
        labels = torch.tensor([ex.labels for ex in rows])
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= 1:
            tokens += ids.numel()
    return tokens, time.perf_counter() - start


def bench_peft(base, data, adapters, batch, tokens, steps) -> float:
    from peft import LoraConfig, get_peft_model

    from lorafleet.trainer.base import load_base
    from lorafleet.trainer.data import load_dataset

    model, tok = load_base(base)
    examples = load_dataset(data, tok, tokens).examples
    total_tokens, total_s = 0, 0.0
    for i in range(adapters):
        config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear", lora_dropout=0.0)
        peft_model = get_peft_model(model, config)
        peft_model.train()
        shift = (i * batch * (steps + 1)) % (len(examples) - batch * (steps + 1))
        n, s = _peft_steps(peft_model, examples[shift:], batch, steps)
        total_tokens, total_s = total_tokens + n, total_s + s
        model = peft_model.unload()
    return total_tokens / total_s


# glibc keeps freed activation buffers on its heap (its mmap threshold rises after the first free): with a fixed
# threshold it unmaps them, so peak RSS shows the memory actually live (at a large speed cost; a diagnostic).
RETURNING_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def child_rss(base, data, adapters, batch, tokens, threads, recompute=False, env_extra=None) -> int:
    """Peak RSS (bytes) of a fresh process that trains a fleet of `adapters` for a few steps."""
    env = {**os.environ, "LORAFLEET_HOME": os.environ["LORAFLEET_HOME"], **(env_extra or {})}
    args = [
        sys.executable,
        __file__,
        "--child",
        base,
        data,
        *map(str, (adapters, batch, tokens, threads, int(recompute))),
    ]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def _child(argv: list[str]) -> None:
    base, data, adapters, batch, tokens, threads, recompute = argv[0], argv[1], *map(int, argv[2:])
    torch.set_num_threads(threads)
    bench_fleet(base, data, adapters, batch, tokens, 3, threads, bool(recompute))
    print(peak_rss_bytes())


def peak_rss_bytes() -> int:
    """This process's own peak RSS. VmHWM belongs to this address space; ru_maxrss would carry over the
    parent's peak across fork+exec, hiding the child's."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return _child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: this CPU is shared)")
    parser.add_argument("--small-steps", type=int, default=15)
    parser.add_argument("--large-steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats; the best of each is reported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LORAFLEET_HOME"] = str(Path(tmp) / "home")
        base = build_base(Path(tmp) / "base")
        steps = {"small": args.small_steps, "large": args.large_steps}
        results = {regime: measure(base, Path(tmp), shape, steps[regime], args, console)
                   for regime, shape in REGIMES.items()}  # fmt: skip
    print_tables(results, args.threads)
    s, large = results["small"], results["large"]
    print(json.dumps({
        "small_speedup_vs_peft": round(s["fleet"] / s["peft"], 3),
        "small_fraction_of_limit": round(s["fleet"] / s["limit"], 3),
        "large_speedup_vs_peft": round(large["fleet"] / large["peft"], 3),
        "large_fraction_of_limit": round(large["fleet"] / large["limit"], 3),
        "mem_ratio_16_vs_1": round(s["rss16"] / s["rss1"], 3),
        "mem_ratio_16_vs_1_recompute": round(s["rss16_recompute"] / s["rss1"], 3),
        "mem_ratio_16_vs_1_large": round(large["rss16"] / large["rss1"], 3),
        "mem_ratio_16_vs_1_large_recompute": round(large["rss16_recompute"] / large["rss1"], 3),
        "mem_ratio_16_vs_1_same_tokens": round(s["rss16"] / s["rss1_total"], 3),
        "mem_ratio_16_vs_1_recompute_live": round(s["rss16_recompute_live"] / s["rss1_live"], 3),
        "small_recompute_speed_ratio": round(s["fleet_recompute"] / s["fleet"], 3),
        "large_recompute_speed_ratio": round(large["fleet_recompute"] / large["fleet"], 3),
        "threads": args.threads,
    }))  # fmt: skip


def measure(base: str, tmp: Path, shape: tuple[int, int, int], steps: int, args, console) -> dict:
    n, b, t = shape
    data = write_data(tmp, t)
    best = dict.fromkeys(("fleet", "fleet_recompute", "peft", "limit"), 0.0)
    for round_ in range(args.rounds):  # interleaved rounds, best of each: the CPU is shared
        console.log(f"{n}x{b}x{t} round {round_ + 1}/{args.rounds}: fleet, fleet recomputing, PEFT one by one, limit")
        best["fleet"] = max(best["fleet"], bench_fleet(base, data, n, b, t, steps, args.threads))
        best["fleet_recompute"] = max(best["fleet_recompute"], bench_fleet(base, data, n, b, t, steps, args.threads,
                                                                           recompute=True))  # fmt: skip
        best["peft"] = max(best["peft"], bench_peft(base, data, n, b, t, steps))
        best["limit"] = max(best["limit"], bench_peft(base, data, 1, n * b, t, steps))
    console.log(f"{n}x{b}x{t}: peak RSS of fleets in child processes")
    return dict(**best, shape=f"{n}x{b}x{t}",
                rss16=child_rss(base, data, n, b, t, args.threads),
                rss16_recompute=child_rss(base, data, n, b, t, args.threads, recompute=True),
                rss1=child_rss(base, data, 1, b, t, args.threads),
                rss1_total=child_rss(base, data, 1, n * b, t, args.threads),
                rss1_live=child_rss(base, data, 1, b, t, args.threads, env_extra=RETURNING_MALLOC),
                rss16_recompute_live=child_rss(base, data, n, b, t, args.threads, recompute=True,
                                               env_extra=RETURNING_MALLOC))  # fmt: skip


def print_tables(results: dict, threads: int) -> None:
    speed = Table(title=f"fleet throughput (CPU, {threads} threads, ~3.3M-param Llama, rank {RANK} all-linear)")
    for col in ("regime", "adapters x seqs x tokens", "fleet tok/s", "fleet recomputing tok/s", "seq. PEFT tok/s",
                "limit tok/s", "fleet/PEFT", "fleet/limit", "recomputing/fleet"):  # fmt: skip
        speed.add_column(col, justify="right")
    memory = Table(title="peak RSS (MiB) of fleets in fresh processes")
    for col in ("regime", "1-fleet", "16-fleet", "16-fleet recomputing", "16 vs 1", "16 recomputing vs 1",
                "1-fleet at 16x batch", "16 vs 1 same tokens", "same, freed memory unmapped"):  # fmt: skip
        memory.add_column(col, justify="right")
    for regime, r in results.items():
        fleet, peft, limit, rc = r["fleet"], r["peft"], r["limit"], r["fleet_recompute"]
        speed.add_row(regime, r["shape"], *(f"{v:,.0f}" for v in (fleet, rc, peft, limit)), f"{fleet / peft:.2f}x",
                      f"{fleet / limit:.2f}", f"{rc / fleet:.2f}")  # fmt: skip
        mib = [f"{r[k] / 2**20:,.0f}" for k in ("rss1", "rss16", "rss16_recompute")]
        memory.add_row(regime, *mib, f"{r['rss16'] / r['rss1']:.2f}", f"{r['rss16_recompute'] / r['rss1']:.2f}",
                       f"{r['rss1_total'] / 2**20:,.0f}", f"{r['rss16'] / r['rss1_total']:.2f}",
                       f"{r['rss16_recompute_live'] / r['rss1_live']:.2f}")  # fmt: skip
    Console(width=180).print(speed)
    Console(width=180).print(memory)


if __name__ == "__main__":
    main()
