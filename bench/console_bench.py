"""Console at scale: a store holding 1,000 adapters x 10,000 steps, the time of each page's
queries (through the console's own data functions) and a real browser load of the fleet and
compare pages until their charts are drawn.

    .venv/bin/python bench/console_bench.py [--adapters 1000] [--steps 10000] [--keep DIR]

Prints a table, then one JSON line: {"fleet_page_s": ..., "compare_page_s": ..., ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

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


# -- page query timings ----------------------------------------------------------------------


def time_queries(url: str, info: dict, repeats: int = 3) -> dict[str, float]:
    """Median seconds of each page's reads, through the console's own data functions (uncached)."""
    os.environ["LORAFLEET_STORE"] = url
    from lorafleet.ui.console import data

    run, keys = info["run_id"], tuple((info["run_id"], a) for a in info["adapters"][:4])
    raw = {name: getattr(data, name).__wrapped__ for name in dir(data) if hasattr(getattr(data, name), "__wrapped__")}

    def fleet():
        table = raw["fleet_table"]((run,))
        raw["sparklines"](data.keys_of(table.iloc[:50]), "loss")

    def compare():
        names = raw["metric_names"]((run,))
        raw["curves"](keys[:2], tuple(m for m in names if m in data.CURVE_METRICS or m.startswith("eval/")))
        raw["adapter_configs"](keys[:2])
        steps = [raw["latest_eval_step"](*k) for k in keys[:2]]
        raw["paired_examples"]((*keys[0], steps[0]), (*keys[1], steps[1]))

    pages = {
        "fleet": fleet,
        "compare": compare,
        "regressions (health)": lambda: raw["health_stats"](run),
        "traces": lambda: (raw["step_phases"](run, 30), raw["step_phases"](run, 10, True)),
    }
    out = {}
    for name, read in pages.items():
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            with data.page_session():
                raw["list_runs"]()
                read()
            times.append(time.perf_counter() - t)
        out[name] = sorted(times)[len(times) // 2]
    return out


# -- browser loads --------------------------------------------------------------------------


BASELINE_APP = """import pandas as pd
import streamlit as st

st.title("Baseline")
st.dataframe(pd.DataFrame({"adapter": ["a", "b", "c"], "loss": [1.0, 2.0, 3.0]}))
"""
PLOTLY_BASELINE_APP = """import plotly.graph_objects as go
import streamlit as st

st.title("Baseline")
st.plotly_chart(go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2])))
"""


def _grid_drawn(page) -> None:
    page.locator('[data-testid="stDataFrame"] td[role="gridcell"]').first.wait_for(state="attached", timeout=60_000)


def time_browser(url: str, home: Path, loads: int = 3) -> dict[str, float]:
    """Median wall time from navigation until the fleet grid / compare plotly traces are drawn
    (plus the first, cold-browser load of each), beside the floor: a one-table Streamlit app."""
    from lorafleet.ui.cli.console_cmd import APP_PATH

    baseline, plotly_baseline = home / "baseline_app.py", home / "plotly_baseline_app.py"
    baseline.write_text(BASELINE_APP)
    plotly_baseline.write_text(PLOTLY_BASELINE_APP)
    waits = {
        "fleet": _grid_drawn,
        "compare": lambda page: page.locator(".main-svg .scatterlayer .trace").first.wait_for(timeout=60_000),
    }
    env = os.environ | {"LORAFLEET_STORE": url, "LORAFLEET_HOME": str(home)}
    env.pop("LORAFLEET_CONSOLE_TOKEN", None)
    floor = _browser_loads(baseline, {"": _grid_drawn}, env, home, loads, between_s=0.5)
    plotly_floor = _browser_loads(plotly_baseline, {"": waits["compare"]}, env, home, loads, between_s=0.5)
    timings = _browser_loads(APP_PATH, waits, env, home, loads, between_s=CACHE_TTL_S + 1)
    return timings | {
        "one-table Streamlit app (floor)": floor[""],
        "one-plotly-chart Streamlit app (floor)": plotly_floor[""],
    }


def _browser_loads(app: Path, waits: dict, env: dict, home: Path, loads: int, between_s: float) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    from lorafleet.ui.cli.console_cmd import streamlit_command

    port = _free_port()
    command = streamlit_command(port)
    command[command.index("run") + 1] = str(app)
    log = open(home / "streamlit.log", "a")  # noqa: SIM115 - closed below
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}")
        samples: dict[str, list[float]] = {}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=BROWSER_ARGS)
            # One browser profile, as a returning user has: static assets cached, but every load is
            # a new Streamlit session whose script runs in full; the first round (cold) is not counted.
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            for i in range(loads + 1):
                for name, drawn in waits.items():
                    page = context.new_page()
                    t = time.perf_counter()
                    page.goto(f"http://127.0.0.1:{port}/{'' if name == 'fleet' else name}")  # fleet is the default page
                    drawn(page)
                    samples.setdefault(name if i else f"{name} (cold browser)", []).append(time.perf_counter() - t)
                    page.close()
                time.sleep(between_s)  # the console's caches expire in between: every load queries the store
            browser.close()
        return {name: sorted(v)[len(v) // 2] for name, v in samples.items()}
    finally:
        server.terminate()
        server.wait(timeout=15)
        log.close()


BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync"]  # fmt: skip
CACHE_TTL_S = 10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(base: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("streamlit did not come up")


def main() -> None:  # pragma: no cover - exercised by running the bench
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--keep", help="keep the filled store in this directory (reused if it exists)")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="console-bench-"))
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["LORAFLEET_HOME"] = str(home)
    url = f"chdb://{root / 'clickhouse'}"
    info_path = root / "info.json"
    try:
        t = time.perf_counter()
        if info_path.exists():
            info = json.loads(info_path.read_text())
        else:
            info = fill_store(url, args.adapters, args.steps)
            info_path.write_text(json.dumps(info))
        fill_s = time.perf_counter() - t
        queries = time_queries(url, info)
        browser = time_browser(url, home)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    rows = args.adapters * args.steps * len(METRICS)
    table = Table(title=f"console over {args.adapters} adapters x {args.steps} steps ({rows:,} metric rows)")
    for column in ("what", "seconds"):
        table.add_column(column)
    table.add_row("fill (write_columns, big batches)", f"{fill_s:.1f}")
    for name, seconds in queries.items():
        table.add_row(f"queries: {name} page", f"{seconds:.3f}")
    for name, seconds in browser.items():
        table.add_row(f"browser: {name} until its chart/table is drawn", f"{seconds:.2f}")
    Console().print(table)
    result = {
        "fleet_page_s": round(browser["fleet"], 3),
        "compare_page_s": round(browser["compare"], 3),
        "table_floor_s": round(browser["one-table Streamlit app (floor)"], 3),
        "plotly_floor_s": round(browser["one-plotly-chart Streamlit app (floor)"], 3),
        "fleet_page_cold_s": round(browser["fleet (cold browser)"], 3),
        "compare_page_cold_s": round(browser["compare (cold browser)"], 3),
        "fleet_queries_s": round(queries["fleet"], 4),
        "compare_queries_s": round(queries["compare"], 4),
        "regressions_queries_s": round(queries["regressions (health)"], 4),
        "traces_queries_s": round(queries["traces"], 4),
        "adapters": args.adapters,
        "steps": args.steps,
        "metric_rows": rows,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
