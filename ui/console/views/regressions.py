"""Regressions: per family, each candidate version against the alias holder through the
registry's own gate (per-metric deltas and intervals), and training-health flags per adapter."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from lorafleet.ui.console import data, health

ALIAS = "production"


def render() -> None:
    st.title("Regressions")
    with data.page_session():
        _render_gate_section()
        _render_health_section()


def _render_gate_section() -> None:
    st.subheader("Candidates against the alias holder")
    if not data.registry_available() or not data.families():
        st.caption("No registered versions yet: register a run's adapters to compare them through the gate.")
        return
    alias = st.text_input("Alias", value=ALIAS, key="reg_alias")
    for family in data.families():
        _render_family(family, alias)


def _render_family(family: str, alias: str) -> None:
    holder = data.alias_holder(family, alias)
    versions = data.versions(family)
    if holder is None:
        st.markdown(f"**{family}** — no `{alias}` yet; {len(versions)} version(s) registered.")
        return
    candidates = [int(v) for v in versions["version"] if int(v) != holder]
    st.markdown(f"**{family}** — `{alias}` is v{holder}; {len(candidates)} candidate(s).")
    for version in candidates:
        report = data.gate_report(family, holder, version)
        verdict = report.get("verdict", "")
        regressed = verdict == "regression"
        title = f"{family} v{version} vs v{holder}: {'REGRESSION' if regressed else verdict}"
        with st.expander(title, expanded=regressed):
            if regressed:
                st.error(f"{family} v{version} regresses against {alias} (v{holder}).")
            elif verdict == "no-evidence":
                st.warning("No eval example is shared by both versions: nothing to compare pair by pair.")
            st.dataframe(data.report_metrics(report), hide_index=True, width="stretch")


def _render_health_section() -> None:
    st.subheader("Training health")
    runs = data.list_runs()
    if runs.empty:
        st.caption("No runs yet.")
        return
    run_id = st.selectbox("Run", runs["run_id"].tolist(), key="health_run")
    stats = data.health_stats(run_id)
    if stats.empty:
        st.caption("No metrics recorded for this run yet.")
        return
    flagged = health.flag_frame(stats)
    severe = flagged[flagged["flags"].map(lambda raised: any(f in health.SEVERE for f in raised))]
    watch = flagged[flagged["flags"].map(bool) & ~flagged.index.isin(severe.index)]
    if severe.empty and watch.empty:
        st.success("No health flags raised.")
    if not severe.empty:
        st.error(f"{len(severe)} adapter(s) flagged as broken: {_describe(severe)}")
    if not watch.empty:
        st.warning(f"{len(watch)} adapter(s) worth a look: {_describe(watch)}")
    _render_health_table(flagged)


def _describe(frame: pd.DataFrame) -> str:
    return ", ".join(f"{r.adapter} ({', '.join(r.flags)})" for r in frame.itertuples())


def _render_health_table(flagged: pd.DataFrame) -> None:
    columns = ["adapter", "family", "status", "status_reason", *health.FLAGS, "loss_first", "loss_min", "loss_last",
               "grad_median", "grad_max", "tokens_per_s"]  # fmt: skip
    if "prev_tokens_per_s" in flagged.columns:
        columns += ["prev_run_id", "prev_tokens_per_s"]
    view = flagged[columns].sort_values(list(health.FLAGS), ascending=False)
    st.dataframe(
        view,
        hide_index=True,
        width="stretch",
        column_config={name: st.column_config.CheckboxColumn(name) for name in health.FLAGS},
        key="health_table",
    )
