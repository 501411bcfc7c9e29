"""Telemetry overhead: the same fleet with telemetry fully on (spans, signals, Prometheus) and
off, alternating in one process, and the writer's sustained rate into the embedded store.

Step time is the interval between consecutive step starts (so it includes every callback and
the writer thread's share of the GIL), median over each run's steps after the first.
Runs alternate off/on, on/off, ... so drift on a shared machine hits both sides.
Prints a table, then one JSON line: {"overhead_ratio", "writer_rows_per_s", ...}.

    .venv/bin/python bench/telemetry_overhead.py [--spec examples/demo.yaml] [--steps 30] [--pairs 3]

The store and runs live in a temporary LORAFLEET_HOME; its models/ links to the real one so a
pre-trained built-in base is reused rather than trained again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import lorafleet
from lorafleet import lorafleet_home
from lorafleet.trainer.callbacks import TrainerCallback

DEMO_SPEC = Path(lorafleet.__file__).resolve().parent / "examples" / "demo.yaml"
TASKS = ("task:reverse", "task:sort", "task:add", "task:swapcase")


class StepTimer(TrainerCallback):
    """Keeps each step's start time."""

    def __init__(self):
        self.starts: list[int] = []

    def on_step(self, record) -> None:
        self.starts.append(record.start_ns)

    def step_seconds(self) -> list[float]:
        return [(b - a) / 1e9 for a, b in zip(self.starts[1:], self.starts[2:], strict=False)]


def fleet_spec(spec_path: Path | None, steps: int):
    from lorafleet.trainer import AdapterSpec, FleetSpec, load_fleet_spec

    if spec_path is not None and spec_path.exists():
        spec = load_fleet_spec(spec_path)
        adapters = [a.model_copy(update={"max_steps": steps, "epochs": None}) for a in spec.adapters]
        return spec.model_copy(update={"adapters": adapters}), str(spec_path)
    adapters = [
        AdapterSpec(name=f"bench-{i}", family=f"bench-{i % 2}", train_data=task, max_steps=steps, eval_every=0)
        for i, task in enumerate(TASKS)
    ]
    return FleetSpec(name="bench", base_model="tiny", device="cpu", adapters=adapters), "built-in 4-adapter tiny fleet"


def one_run(spec, store_url: str, telemetry_on: bool) -> dict:
    from lorafleet.telemetry import Telemetry
    from lorafleet.trainer import run_fleet

    timer = StepTimer()
    tel = Telemetry(store_url, prometheus_port=0) if telemetry_on else None
    callbacks = [tel, timer] if tel else [timer]
    t0 = time.perf_counter()
    run_fleet(spec, callbacks=callbacks)
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    if tel:
        tel.shutdown()
    seconds = timer.step_seconds()
    return {
        "telemetry": telemetry_on,
        "steps": len(timer.starts),
        "median_s": statistics.median(seconds),
        "mean_s": statistics.fmean(seconds),
        "wall_s": wall,
        "shutdown_s": time.perf_counter() - t1 if tel else 0.0,
        "hook_errors": tel.hook_errors if tel else 0,
    }


def writer_rate(store_url: str, rows: int) -> dict:
    """Metric rows emitted at full speed until all are in the store: sustained rows/s and enqueue cost."""
    from lorafleet.store import metrics, open_store
    from lorafleet.telemetry import BatchWriter, ProcessStoreSink, Spool, spool_root

    open_store(store_url).close()  # schema in place before the clock starts
    # The sink Telemetry uses: the store's work in a child process.
    writer = BatchWriter(ProcessStoreSink(store_url), Spool(spool_root() / "bench"), flush_interval_s=0.5)
    assert writer.flush(60)  # child started before the clock starts
    adapters = [f"adapter-{i:03d}" for i in range(64)]
    names = ("loss", "grad_norm", "learning_rate", "tokens", "tokens_per_s", "step_seconds")
    emit, clock = writer.emit, time.perf_counter_ns
    sample: list[int] = []
    base_ts = time.time_ns() // 1000
    t0 = time.perf_counter()
    for i in range(rows):
        row = ("bench-writer", adapters[i % 64], names[(i >> 6) % 6], i // 384, i * 1e-6, base_ts + i)
        if i % 64 == 0:
            s = clock()
            emit(row)
            sample.append(clock() - s)
        else:
            emit(row)
    emitted = time.perf_counter() - t0
    assert writer.flush(600), "writer did not drain"
    elapsed = time.perf_counter() - t0
    writer.shutdown()
    stored = metrics.count_points(open_store(store_url), "bench-writer", distinct=False)
    quantiles = statistics.quantiles(sample, n=100)
    return {
        "rows": rows,
        "stored": stored,
        "emit_s": emitted,
        "total_s": elapsed,
        "rows_per_s": rows / elapsed,
        "enqueue_p50_us": quantiles[49] / 1000,
        "enqueue_p99_us": quantiles[98] / 1000,
        "spooled_rows": writer.stats.spooled_rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=DEMO_SPEC, help="fleet YAML (default: the demo fleet)")
    parser.add_argument("--steps", type=int, default=30, help="steps per adapter in each run")
    parser.add_argument("--pairs", type=int, default=3, help="off/on pairs")
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows for the writer rate")
    args = parser.parse_args()

    real_models = lorafleet_home() / "models"
    home = Path(tempfile.mkdtemp(prefix="lorafleet-bench-"))
    real_models.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(real_models, target_is_directory=True)
    os.environ["LORAFLEET_HOME"] = str(home)
    os.environ.pop("LORAFLEET_STORE", None)
    store_url = f"chdb://{Path(os.environ['LORAFLEET_HOME']) / 'clickhouse'}"
    spec, spec_name = fleet_spec(args.spec, args.steps)

    progress = Console(stderr=True)
    one_run(spec, store_url, telemetry_on=False)  # warm-up: base model built, caches filled
    results = []
    for pair in range(args.pairs):
        for on in (False, True) if pair % 2 == 0 else (True, False):
            results.append(one_run(spec, store_url, on))
            progress.print(f"run {len(results)}: telemetry {'on' if on else 'off'}, {results[-1]}")
    writer = writer_rate(store_url, args.rows)
    progress.print(f"writer: {writer}")

    off = [r for r in results if not r["telemetry"]]
    on = [r for r in results if r["telemetry"]]
    # Each pair ran back to back, so its on/off ratio sees the same machine; the median pair is the figure.
    ratio = statistics.median(a["median_s"] / b["median_s"] for a, b in zip(on, off, strict=True))
    mean_ratio = statistics.fmean(r["mean_s"] for r in on) / statistics.fmean(r["mean_s"] for r in off)

    console = Console()
    table = Table(title=f"Telemetry overhead: {spec_name}, {args.steps} steps/adapter, {args.pairs} pairs")
    for column in ("telemetry", "steps", "median step ms", "mean step ms", "run wall s", "shutdown s"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            "on" if r["telemetry"] else "off", str(r["steps"]), f"{r['median_s'] * 1e3:.2f}",
            f"{r['mean_s'] * 1e3:.2f}", f"{r['wall_s']:.2f}", f"{r['shutdown_s']:.2f}",
        )  # fmt: skip
    console.print(table)
    summary = Table(title="Summary")
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    summary.add_column("goal", justify="right")
    summary.add_row("overhead ratio (median step, on/off, median pair)", f"{ratio:.3f}", "<= 1.03")
    summary.add_row("overhead ratio (mean step, on/off)", f"{mean_ratio:.3f}", "")
    summary.add_row("writer rows/s into embedded store", f"{writer['rows_per_s']:,.0f}", ">= 500,000")
    summary.add_row("rows stored / emitted", f"{writer['stored']:,} / {writer['rows']:,}", "all")
    summary.add_row("enqueue p50 / p99 (us)", f"{writer['enqueue_p50_us']:.2f} / {writer['enqueue_p99_us']:.2f}", "")
    console.print(summary)
    print(
        json.dumps(
            {
                "overhead_ratio": round(ratio, 4),
                "writer_rows_per_s": round(writer["rows_per_s"]),
                "mean_step_overhead_ratio": round(mean_ratio, 4),
                "enqueue_p99_us": round(writer["enqueue_p99_us"], 3),
                "writer_rows_stored": writer["stored"],
                "fleet": spec_name,
            }
        )
    )


if __name__ == "__main__":
    main()
