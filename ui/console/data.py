"""The console's only data access: one cached store handle and named, cached functions over
lorafleet.store. Pages never see SQL or the store; they call these and get DataFrames.

The embedded store is opened per unit of work under a file lock shared with the trainer, so a
page wraps its reads in `page_session()`: the engine opens once, on the first cache miss,
and closes when the page is done. Writes go through the same store.registry functions as the
CLI and clear the caches after.
"""

from __future__ import annotations

import hmac
import json
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import pandas as pd
import streamlit as st

from lorafleet.store import evals, metrics, open_store, runs, traces

TOKEN_ENV = "LORAFLEET_CONSOLE_TOKEN"
LIVE_TTL = 2  # seconds: the fleet page of a live run
TTL = 10
CURVE_METRICS = ("loss", "grad_norm", "learning_rate")

_page = threading.local()


@st.cache_resource
def get_store():
    """One store handle per console process; the URL comes from LORAFLEET_STORE (set by `lorafleet console`)."""
    return open_store(os.environ.get("LORAFLEET_STORE") or None)


def store_label() -> str:
    return get_store().url.masked()


@contextmanager
def page_session() -> Iterator[None]:
    """Hold the engine for one page render, opening it lazily on the first query that misses the cache."""
    stack = ExitStack()
    _page.stack, _page.opened = stack, False
    try:
        with stack:
            yield
    finally:
        _page.stack = None


def _store():
    store = get_store()
    stack = getattr(_page, "stack", None)
    if stack is not None and not _page.opened:
        stack.enter_context(store.session())
        _page.opened = True
    return store


# -- runs and the fleet ---------------------------------------------------------------------


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def list_runs() -> pd.DataFrame:
    return pd.DataFrame(runs.list_runs(_store(), limit=500))


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def fleet_table(run_ids: tuple[str, ...]) -> pd.DataFrame:
    """Adapters of the runs with their latest metric values as columns (loss, grad_norm, eval/...)."""
    store = _store()
    adapters = pd.DataFrame(runs.list_adapters(store, list(run_ids)))
    if adapters.empty:
        return adapters
    latest = pd.DataFrame(metrics.fleet_latest(store, list(run_ids)))
    if not latest.empty:
        wide = latest.pivot_table(index=["run_id", "adapter"], columns="metric", values="value", aggfunc="last")
        adapters = adapters.merge(wide.reset_index(), on=["run_id", "adapter"], how="left")
        last_step = latest.groupby(["run_id", "adapter"])["step"].max().rename("metric_step").reset_index()
        adapters = adapters.merge(last_step, on=["run_id", "adapter"], how="left")
    adapters["config"] = adapters["config"].map(lambda c: json.dumps(c, sort_keys=True))
    return adapters


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def adapter_keys(run_ids: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple(runs.adapter_keys(_store(), list(run_ids)))


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def sparklines(keys: tuple[tuple[str, str], ...], metric: str = "loss", points: int = 30) -> dict:
    rows = metrics.sparklines(_store(), list(keys), metric, points)
    return {(r["run_id"], r["adapter"]): [float(v) for v in r["values"]] for r in rows}


# -- compare --------------------------------------------------------------------------------


@st.cache_data(ttl=TTL, show_spinner=False)
def metric_names(run_ids: tuple[str, ...]) -> list[str]:
    store = _store()
    return sorted({name for run in run_ids for name in metrics.metric_names(store, run)})


@st.cache_data(ttl=TTL, show_spinner=False)
def curves(keys: tuple[tuple[str, str], ...], metric_list: tuple[str, ...], max_points: int = 400) -> pd.DataFrame:
    return pd.DataFrame(metrics.curves(_store(), list(keys), list(metric_list), max_points))


@st.cache_data(ttl=TTL, show_spinner=False)
def adapter_configs(keys: tuple[tuple[str, str], ...]) -> dict[tuple[str, str], dict]:
    store = _store()
    wanted = set(keys)
    rows = runs.list_adapters(store, sorted({k[0] for k in keys}))
    return {(r["run_id"], r["adapter"]): r["config"] for r in rows if (r["run_id"], r["adapter"]) in wanted}


@st.cache_data(ttl=TTL, show_spinner=False)
def latest_eval_step(run_id: str, adapter: str) -> int | None:
    return evals.latest_eval_step(_store(), run_id, adapter)


@st.cache_data(ttl=TTL, show_spinner=False)
def paired_examples(a: tuple[str, str, int], b: tuple[str, str, int]) -> pd.DataFrame:
    return pd.DataFrame(evals.paired_examples(_store(), a, b))


# -- health ---------------------------------------------------------------------------------


@st.cache_data(ttl=TTL, show_spinner=False)
def health_stats(run_id: str) -> pd.DataFrame:
    store = _store()
    stats = pd.DataFrame(metrics.health_stats(store, [run_id]))
    if stats.empty:
        return stats
    prev = pd.DataFrame(metrics.previous_throughput(store, run_id))
    if not prev.empty:
        stats = stats.merge(prev, on="adapter", how="left")
    adapters = pd.DataFrame(runs.list_adapters(store, [run_id]))[["adapter", "family", "status", "status_reason"]]
    return adapters.merge(stats, on="adapter", how="left")


# -- traces ---------------------------------------------------------------------------------


@st.cache_data(ttl=TTL, show_spinner=False)
def step_phases(run_id: str, limit: int = 30, slowest: bool = False) -> pd.DataFrame:
    frame = pd.DataFrame(traces.step_phases(_store(), run_id, limit=limit, slowest=slowest))
    if not frame.empty:
        frame["offset_s"] = frame["offset_s"].astype(float)
    return frame


# -- registry -------------------------------------------------------------------------------
# Every read and write goes through lorafleet.store.registry, the module behind the CLI's
# promote/rollback/history: the console has no registry logic of its own.


def _registry():
    from lorafleet.store import registry

    return registry


def registry_available() -> bool:
    try:
        _registry()
    except ImportError:
        return False
    return True


@st.cache_data(ttl=TTL, show_spinner=False)
def families() -> list[str]:
    return [f["family"] for f in _registry().list_families(_store())]


@st.cache_data(ttl=TTL, show_spinner=False)
def versions(family: str) -> pd.DataFrame:
    return pd.DataFrame([v.to_dict() for v in _registry().list_versions(_store(), family)])


@st.cache_data(ttl=TTL, show_spinner=False)
def aliases(family: str) -> dict[str, int]:
    return _registry().aliases(_store(), family)


def alias_holder(family: str, alias: str) -> int | None:
    return aliases(family).get(alias)


@st.cache_data(ttl=TTL, show_spinner=False)
def history(family: str) -> pd.DataFrame:
    return pd.DataFrame([e.to_dict() for e in _registry().history(_store(), family)])


@st.cache_data(ttl=TTL, show_spinner=False)
def gate_report(family: str, baseline: int, candidate: int) -> dict:
    """The registry's gate table for candidate against baseline (the same compare the CLI prints)."""
    return _registry().compare(_store(), family, baseline, candidate).to_dict()


def report_metrics(report: dict) -> pd.DataFrame:
    """The gate report's per-metric rows: deltas (> 0 is better) and their paired-bootstrap interval."""
    rows = pd.DataFrame(report.get("rows") or [])
    if rows.empty:
        return rows
    columns = ["suite", "metric", "n", "baseline_mean", "candidate_mean", "delta", "ci_low", "ci_high", "regression"]
    return rows[[c for c in columns if c in rows.columns]]


def plan_promote(family: str, version: int, alias: str, reason: str, actor: str, force: bool = False):
    """Check a promotion exactly as the CLI does (names, artifact hash, gate); raises GateRefused with .report."""
    return _registry().plan_promote(get_store(), family, version, alias, reason=reason, force=force, actor=actor)


def plan_rollback(family: str, alias: str, reason: str, actor: str, to: int | None = None):
    return _registry().plan_rollback(get_store(), family, alias, to=to, reason=reason, actor=actor)


def apply_move(plan):
    """Apply a confirmed plan (lands only if the alias has not moved since); clears cached reads."""
    try:
        return _registry().apply_move(get_store(), plan)
    finally:
        st.cache_data.clear()


# -- operator token -------------------------------------------------------------------------


OPERATOR_KEY = "operator_actor"


def operator_actor() -> str | None:
    """The actor to record for writes, or None: then the console is read-only and offers no write control."""
    return st.session_state.get(OPERATOR_KEY) if token_configured() else None


def token_configured() -> bool:
    return bool(os.environ.get(TOKEN_ENV))


def token_matches(entered: str) -> bool:
    expected = os.environ.get(TOKEN_ENV, "")
    return bool(expected) and hmac.compare_digest(entered.encode(), expected.encode())


def keys_of(frame: pd.DataFrame) -> tuple[tuple[str, str], ...]:
    return tuple(zip(frame["run_id"], frame["adapter"], strict=True)) if not frame.empty else ()


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """Nested config -> {'a.b': value}, for the config diff."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value, sort_keys=True) if isinstance(value, list) else value
    return flat


def differing_keys(configs: Sequence[dict]) -> list[str]:
    flats = [flatten(c) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    return [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]
