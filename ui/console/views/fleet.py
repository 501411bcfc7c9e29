"""Fleet: every adapter of the chosen runs with status, step, latest loss, grad norm, eval and
tokens/s, and a loss sparkline; refreshes itself while a run is live."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from lorafleet.ui.console import data

PAGE_SIZE = 50
STATUSES = ("running", "stopped", "quarantined", "early_stopped", "finished", "rejected")
REFRESH_S = 2.0


def render() -> None:
    st.title("Fleet")
    with data.page_session():
        all_runs = data.list_runs()
    if all_runs.empty:
        st.info("No runs in this store yet. Start one with `lorafleet train examples/demo.yaml` or `lorafleet demo`.")
        return
    run_ids = _render_run_filter(all_runs)
    if not run_ids:
        st.info("Pick at least one run.")
        return
    live = bool(all_runs[all_runs["run_id"].isin(run_ids)]["status"].eq("running").any())
    if live:
        st.caption(f"A selected run is live: this table refreshes every {REFRESH_S:g} s.")
    st.fragment(_render_fleet, run_every=REFRESH_S if live else None)(tuple(run_ids))


def _render_run_filter(all_runs: pd.DataFrame) -> list[str]:
    live = all_runs[all_runs["status"] == "running"]["run_id"].tolist()
    default = live or all_runs["run_id"].head(1).tolist()
    labels = {r.run_id: f"{r.run_id} · {r.status} · {r.adapters} adapters" for r in all_runs.itertuples()}
    return st.multiselect(
        "Runs", all_runs["run_id"].tolist(), default=default, format_func=labels.get, key="fleet_runs"
    )


def _render_fleet(run_ids: tuple[str, ...]) -> None:
    with data.page_session():
        table = data.fleet_table(run_ids)
        if table.empty:
            st.info("These runs have no adapters yet.")
            return
        table = _render_filters(table)
        _render_summary(table)
        page = _render_pager(table)
        spark = data.sparklines(data.keys_of(page), "loss")
    _render_table(page, spark)


def _render_filters(table: pd.DataFrame) -> pd.DataFrame:
    left, mid, right = st.columns([2, 2, 2])
    families = left.multiselect("Family", sorted(table["family"].unique()), key="fleet_family")
    statuses = mid.multiselect("Status", [s for s in STATUSES if s in set(table["status"])], key="fleet_status")
    # eval/<suite>/<metric>: pick the metric; each adapter shows its mean over the suites it has.
    evals = sorted({str(c).rsplit("/", 1)[-1] for c in table.columns if str(c).startswith("eval/")})
    preferred = next((m for m in ("exact_match", "char_accuracy", "eval_loss") if m in evals), None)
    index = evals.index(preferred) if preferred else 0
    eval_metric = right.selectbox("Eval metric", evals, index=index, key="fleet_eval") if evals else None
    st.session_state["fleet_eval_metric"] = eval_metric
    if families:
        table = table[table["family"].isin(families)]
    if statuses:
        table = table[table["status"].isin(statuses)]
    return table


def _render_summary(table: pd.DataFrame) -> None:
    counts = table["status"].value_counts()
    cols = st.columns(len(STATUSES) + 1)
    cols[0].metric("adapters", len(table))
    for col, status in zip(cols[1:], STATUSES, strict=True):
        col.metric(status, int(counts.get(status, 0)))


def _render_pager(table: pd.DataFrame) -> pd.DataFrame:
    pages = max(1, math.ceil(len(table) / PAGE_SIZE))
    if pages == 1:
        return table
    page = st.number_input(f"Page (of {pages}, {PAGE_SIZE} adapters each)", 1, pages, 1, key="fleet_page")
    start = (int(page) - 1) * PAGE_SIZE
    return table.iloc[start : start + PAGE_SIZE]


def _render_table(page: pd.DataFrame, spark: dict) -> None:
    eval_metric = st.session_state.get("fleet_eval_metric")
    view = pd.DataFrame(
        {
            "run": page["run_id"],
            "adapter": page["adapter"],
            "family": page["family"],
            "status": page["status"],
            "step": _steps(page),
            "loss": _column(page, "loss"),
            "grad norm": _column(page, "grad_norm"),
            "eval": _eval_column(page, eval_metric),
            "tokens/s": _column(page, "tokens_per_s"),
            "loss curve": [spark.get(k, []) for k in data.keys_of(page)],
            "reason": page["status_reason"],
        }
    )
    st.dataframe(
        view,
        hide_index=True,
        width="stretch",
        height=min(38 + 35 * len(view), 1800),
        column_config={
            "loss": st.column_config.NumberColumn(format="%.4f"),
            "grad norm": st.column_config.NumberColumn(format="%.3f"),
            "eval": st.column_config.NumberColumn(eval_metric or "eval", format="%.3f"),
            "tokens/s": st.column_config.NumberColumn(format="%.0f"),
            "loss curve": st.column_config.LineChartColumn("loss curve", width="medium"),
        },
        key="fleet_table",
    )


def _steps(page: pd.DataFrame) -> pd.Series:
    """The adapter's step as last reported by either its row or its newest metric."""
    if "metric_step" not in page.columns:
        return page["step"]
    return pd.concat([page["step"], page["metric_step"].fillna(0)], axis=1).max(axis=1).astype("int64")


def _eval_column(page: pd.DataFrame, metric: str | None) -> pd.Series:
    columns = [c for c in page.columns if metric and str(c).startswith("eval/") and str(c).endswith("/" + metric)]
    if not columns:
        return _column(page, None)
    return page[columns].mean(axis=1, skipna=True)


def _column(page: pd.DataFrame, name: str | None) -> pd.Series:
    if name and name in page.columns:
        return page[name]
    return pd.Series([None] * len(page), index=page.index, dtype="float64")
