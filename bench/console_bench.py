"""Console at scale: a store holding 1,000 adapters x 10,000 steps, the time of each page's
queries (through the console's own data functions) and a real browser load of the fleet and
compare pages until their charts are drawn.

    .venv/bin/python bench/console_bench.py [--adapters 1000] [--steps 10000] [--keep DIR]

Prints a table, then one JSON line: {"fleet_page_s": ..., "compare_page_s": ..., ...}.
"""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np

from lorafleet.store import evals, metrics, open_store, runs, traces

METRICS = ("loss", "grad_norm", "learning_rate", "tokens_per_s")
FAMILIES = ("support-bot", "sql-helper", "summarizer", "translator")
PHASES = ("data", "forward", "backward", "optimizer")


def fill_store(url: str, n_adapters: int, n_steps: int, *, chunk_rows: int = 4_000_000, seed: int = 0) -> dict:
    """Write a synthetic fleet straight through the store API: one run of `n_adapters` adapters
    (adapter 0 of each family diverges), a previous run of the first family with the same
    configs, metrics in big column batches, per-example evals and step traces."""
    rng = np.random.default_rng(seed)
    store = open_store(url)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    run_id, prev_run = "bench-" + uuid.uuid4().hex[:6], "bench-prev"
    names = [f"a{i:04d}" for i in range(n_adapters)]
    family = {n: FAMILIES[i % len(FAMILIES)] for i, n in enumerate(names)}
    configs = {n: {"family": family[n], "rank": 4 + 4 * (i % 3), "lr": 1e-3 * (1 + i % 5)} for i, n in enumerate(names)}
    bad = {n for i, n in enumerate(names) if i < len(FAMILIES)}
    with store.session():
        for rid, start in ((prev_run, t0 - timedelta(days=1)), (run_id, t0)):
            runs.upsert_run(
                store, runs.RunRow(run_id=rid, name=rid, status="finished", base_model="tiny", started_at=start)
            )
        prev_names = [n for n in names if family[n] == FAMILIES[0]][:8]
        runs.upsert_adapters(
            store,
            [runs.AdapterRow(prev_run, n, family[n], "finished", config=configs[n], step=n_steps) for n in prev_names],
        )
        runs.upsert_adapters(
            store,
            [
                runs.AdapterRow(run_id, n, family[n], "quarantined" if n in bad else "finished",
                                "non-finite loss" if n in bad else "", configs[n], step=n_steps)
                for n in names
            ],
        )  # fmt: skip
        _write_metrics(store, prev_run, prev_names, n_steps, t0 - timedelta(days=1), bad, rng, chunk_rows, speed=1.5)
        _write_metrics(store, run_id, names, n_steps, t0, bad, rng, chunk_rows)
        _write_evals(store, run_id, names[: min(n_adapters, 16)], n_steps, t0, bad)
        _write_spans(store, run_id, min(n_steps, 200), t0)
    return {"run_id": run_id, "prev_run_id": prev_run, "adapters": names, "bad": sorted(bad), "family": family}


def _write_metrics(store, run_id, names, n_steps, t0, bad, rng, chunk_rows, speed=1.0) -> None:
    steps = np.arange(1, n_steps + 1, dtype=np.uint64)
    ts = np.datetime64(t0.replace(tzinfo=None), "us") + (steps.astype(np.int64) * 500_000).astype("timedelta64[us]")
    per_adapter = n_steps * len(METRICS)
    batch = max(1, chunk_rows // per_adapter)
    for lo in range(0, len(names), batch):
        group = names[lo : lo + batch]
        cols = {"adapter": [], "metric": [], "value": []}
        for name in group:
            for metric, values in _curves(name, steps, name in bad, rng, speed).items():
                cols["adapter"].append(np.full(n_steps, name, dtype=object))
                cols["metric"].append(np.full(n_steps, metric, dtype=object))
                cols["value"].append(values)
        n = len(group) * per_adapter
        metrics.write_columns(
            store,
            np.full(n, run_id, dtype=object),
            np.concatenate(cols["adapter"]),
            np.concatenate(cols["metric"]),
            np.tile(steps, len(group) * len(METRICS)),
            np.concatenate(cols["value"]),
            np.tile(ts, len(group) * len(METRICS)),
        )


def _curves(name: str, steps: np.ndarray, bad: bool, rng, speed: float) -> dict[str, np.ndarray]:
    s = steps.astype(np.float64)
    loss = 2.0 * np.exp(-s / (len(s) / 4)) + 0.5 + rng.normal(0, 0.02, len(s))
    grad = 1.0 + rng.normal(0, 0.05, len(s)) ** 2
    if bad:  # diverges in the second half, with gradient spikes and a non-finite loss at the end
        half = len(s) // 2
        loss[half:] += np.linspace(0, 5, len(s) - half)
        grad[half::50] *= 40
        loss[-1] = np.nan
    lr = np.minimum(1.0, s / 100) * 1e-3
    tps = 1000.0 * speed + rng.normal(0, 10, len(s))
    return {"loss": loss, "grad_norm": grad, "learning_rate": lr, "tokens_per_s": tps}


def _write_evals(store, run_id, names, n_steps, t0, bad) -> None:
    rows = []
    for name in names:
        for step in (n_steps // 2, n_steps):
            for i in range(20):
                good = (i % 3 != 0) or step == n_steps
                score = 0.0 if name in bad and i % 2 == 0 else float(good)
                out = "wrong" if score == 0 else f"answer {i}"
                rows.append(
                    evals.EvalRow(run_id, name, step, "qa", "exact_match", f"ex{i:03d}", score,
                                  f"question {i}?", out, f"answer {i}", t0)
                )  # fmt: skip
    evals.write_evals(store, rows)
    # Eval aggregates also live in metrics, as telemetry writes them.
    agg = [
        (run_id, n, "eval/qa/exact_match", s, 0.2 if n in bad else 0.9, t0)
        for n in names
        for s in (n_steps // 2, n_steps)
    ]
    metrics.write_points(store, agg)


def _write_spans(store, run_id, n_steps, t0) -> None:
    base = int(t0.timestamp() * 1e9)
    res = {"service.name": "lorafleet-trainer", "lorafleet.run.id": run_id}
    rows = []
    trace = uuid.uuid4().hex
    root = uuid.uuid4().hex[:16]
    rows.append(_span(base, trace, root, "", "run", res, {}, n_steps * 500_000_000))
    for step in range(1, n_steps + 1):
        start = base + step * 500_000_000
        sid = uuid.uuid4().hex[:16]
        dur = 400_000_000 + (300_000_000 if step % 37 == 0 else 0)
        rows.append(_span(start, trace, sid, root, "step", res, {"lorafleet.step": str(step)}, dur))
        offset = start
        for phase, frac in zip(PHASES, (0.1, 0.35, 0.45, 0.1), strict=True):
            d = int(dur * frac)
            rows.append(_span(offset, trace, uuid.uuid4().hex[:16], sid, phase, res, {"lorafleet.step": str(step)}, d))
            offset += d
    traces.write_spans(store, rows)


def _span(start, trace, sid, parent, name, res, attrs, dur):
    ts = datetime.fromtimestamp(start / 1e9, UTC)
    return [ts, trace, sid, parent, "", name, "Internal", "lorafleet-trainer", res, "lorafleet", "0.1.0",
            attrs, dur, "Ok", "", [], [], [], [], [], [], []]  # fmt: skip


def main() -> None:  # pragma: no cover - exercised by running the bench
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--keep", help="reuse/keep the store in this directory")
    args = parser.parse_args()
    from bench_console_pages import run_bench  # noqa: F401  # placeholder until the page timings land

    raise SystemExit(run_bench(args))


if __name__ == "__main__":
    main()
