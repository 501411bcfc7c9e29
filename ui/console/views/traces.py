"""Traces: a run's step waterfall (phases per step from otel_traces) and its slowest steps."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from lorafleet.ui.console import data

PHASE_COLORS = {"data": "#8c8c8c", "forward": "#1f77b4", "backward": "#d62728", "optimizer": "#2ca02c"}


def render() -> None:
    st.title("Traces")
    with data.page_session():
        runs = data.list_runs()
        if runs.empty:
            st.info("No runs yet.")
            return
        run_id = st.selectbox("Run", runs["run_id"].tolist(), key="tr_run")
        count = st.slider("Steps", 5, 200, 30, key="tr_steps")
        latest = data.step_phases(run_id, limit=count)
        slowest = data.step_phases(run_id, limit=10, slowest=True)
    if latest.empty:
        st.info("No step traces for this run (telemetry writes `step` spans with phase children).")
        return
    _render_summary(latest)
    st.subheader(f"Latest {latest['step'].nunique()} steps")
    st.plotly_chart(_waterfall(latest), width="stretch", key="tr_latest")
    st.subheader("Slowest steps")
    _render_slowest(slowest)


def _render_summary(frame: pd.DataFrame) -> None:
    per_phase = frame.groupby("phase")["phase_s"].mean()
    steps = frame.drop_duplicates("step")["step_s"]
    cols = st.columns(len(per_phase) + 1)
    cols[0].metric("mean step", f"{steps.mean() * 1000:.1f} ms")
    for col, (phase, seconds) in zip(cols[1:], per_phase.items(), strict=True):
        col.metric(phase, f"{seconds * 1000:.1f} ms")


def _waterfall(frame: pd.DataFrame) -> go.Figure:
    """One horizontal row per step; each phase is a bar starting at its offset inside the step."""
    fig = go.Figure()
    for phase, part in frame.groupby("phase"):
        fig.add_trace(
            go.Bar(
                y=part["step"].astype(str),
                x=part["phase_s"] * 1000,
                base=part["offset_s"] * 1000,
                orientation="h",
                name=str(phase),
                marker_color=PHASE_COLORS.get(str(phase)),
                hovertemplate="step %{y}<br>%{x:.1f} ms from %{base:.1f} ms<extra>" + str(phase) + "</extra>",
            )
        )
    steps = sorted(frame["step"].unique())
    fig.update_layout(
        barmode="overlay",
        height=max(260, 22 * len(steps) + 80),
        margin={"l": 10, "r": 10, "t": 20, "b": 10},
        legend={"orientation": "h"},
        xaxis_title="ms since step start",
        yaxis={"title": "step", "categoryorder": "array", "categoryarray": [str(s) for s in steps]},
    )
    return fig


def _render_slowest(frame: pd.DataFrame) -> None:
    if frame.empty:
        return
    wide = frame.pivot_table(index=["step", "step_s"], columns="phase", values="phase_s", aggfunc="sum")
    wide = (wide * 1000).round(2).reset_index().sort_values("step_s", ascending=False)
    wide["step_s"] = (wide["step_s"] * 1000).round(2)
    st.dataframe(wide.rename(columns={"step_s": "step ms"}), hide_index=True, width="stretch", key="tr_slowest")
    st.plotly_chart(_waterfall(frame), width="stretch", key="tr_slowest_fig")
