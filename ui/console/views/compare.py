"""Compare: 2..N adapters (or registry versions) side by side: overlaid curves downsampled in
SQL with spikes kept, a config diff of only the differing keys, and per-example eval results."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from lorafleet.ui.console import data

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def render() -> None:
    st.title("Compare")
    selection, curves = st.container(), st.container()
    with curves:
        st.subheader("Curves")
        controls, chart = st.container(), st.empty()
        # An empty chart frame first: the browser starts loading the plotly bundle (about a second's work on a
        # small machine) while the queries run, instead of after them. The curves replace it.
        chart.plotly_chart(_skeleton(), width="stretch", config={"staticPlot": True})
    with data.page_session(), selection:
        keys = _render_selection()
        if len(keys) < 2:
            chart.info("Pick at least two adapters or versions to compare.")
            return
        names = sorted(set().union(*(data.metric_names((run,)) for run in {k[0] for k in keys})))
        wanted = [m for m in data.CURVE_METRICS if m in names] + [m for m in names if m.startswith("eval/")]
        frame = data.curves(tuple(keys), tuple(wanted))
        configs = data.adapter_configs(tuple(keys))
    _render_curves(controls, chart, keys, frame, wanted)
    _render_config_diff(keys, configs)
    with data.page_session():
        _render_examples(keys)


def label(key: tuple[str, str]) -> str:
    return f"{key[1]} ({key[0]})"


def _render_selection() -> list[tuple[str, str]]:
    mode = st.segmented_control("Compare", ["Adapters", "Registry versions"], default="Adapters", key="cmp_mode")
    if mode == "Registry versions":
        return _select_versions()
    runs = data.list_runs()
    if runs.empty:
        return []
    run_ids = st.multiselect("Runs", runs["run_id"].tolist(), default=runs["run_id"].head(1).tolist(), key="cmp_runs")
    options = list(data.adapter_keys(tuple(run_ids))) if run_ids else []
    return st.multiselect("Adapters", options, default=options[:2], format_func=label, key="cmp_adapters")


def _select_versions() -> list[tuple[str, str]]:
    if not data.registry_available() or not data.families():
        st.info("No registered versions yet.")
        return []
    family = st.selectbox("Family", data.families(), key="cmp_family")
    versions = data.versions(family)
    if versions.empty:
        return []
    by_version = {int(v.version): (v.run_id, v.adapter) for v in versions.itertuples()}
    picked = st.multiselect(
        "Versions", list(by_version), default=list(by_version)[-2:], format_func=lambda v: f"v{v}", key="cmp_versions"
    )
    return [by_version[v] for v in picked]


def _skeleton() -> go.Figure:
    hidden = {"visible": False}
    note = {"text": "loading curves…", "showarrow": False}
    margin = {"l": 10, "r": 10, "t": 10, "b": 10}
    return go.Figure(layout={"height": 300, "margin": margin, "xaxis": hidden, "yaxis": hidden, "annotations": [note]})


def _render_curves(controls, chart, keys: list[tuple[str, str]], frame: pd.DataFrame, wanted: list[str]) -> None:
    if frame.empty:
        chart.info("No metrics recorded for these adapters yet.")
        return
    axis = controls.radio("x axis", ["step", "time"], horizontal=True, key="cmp_axis")
    present = [m for m in wanted if (frame["metric"] == m).any()]
    figure = _figure(keys, frame, present, "step" if axis == "step" else "ts")
    chart.plotly_chart(figure, width="stretch", key="cmp_fig")


def _figure(keys: list[tuple[str, str]], frame: pd.DataFrame, present: list[str], x: str) -> go.Figure:
    """One figure, one subplot per metric: a single chart to draw however many metrics there are."""
    rows = max(1, math.ceil(len(present) / 2))
    fig = make_subplots(rows=rows, cols=2, subplot_titles=present, vertical_spacing=0.3 / rows + 0.04)
    in_legend: set = set()
    for i, metric in enumerate(present):
        part = frame[frame["metric"] == metric]
        for j, key in enumerate(keys):
            series = part[(part["run_id"] == key[0]) & (part["adapter"] == key[1])]
            if not series.empty:
                _add_series(fig, series, x, key, COLORS[j % len(COLORS)], i // 2 + 1, i % 2 + 1, key not in in_legend)
                in_legend.add(key)
    fig.update_layout(
        height=280 * rows + 90, margin={"l": 10, "r": 10, "t": 90, "b": 10}, hovermode="x unified",
        legend={"orientation": "h", "yref": "container", "y": 0.99, "yanchor": "top", "x": 0},
    )  # fmt: skip
    return fig


def _add_series(fig: go.Figure, series: pd.DataFrame, x: str, key, color: str, row: int, col: int, legend: bool):
    xs = series[x].tolist()
    # One closed band per curve spans each bucket's min..max, so a spike inside a bucket stays visible.
    band = go.Scatter(
        x=xs + xs[::-1], y=series["max"].tolist() + series["min"].tolist()[::-1], fill="toself",
        fillcolor=_alpha(color), line={"width": 0}, hoverinfo="skip", showlegend=False, legendgroup=label(key),
    )  # fmt: skip
    line = go.Scatter(
        x=xs, y=series["last"], name=label(key), legendgroup=label(key), showlegend=legend,
        line={"color": color, "width": 1.5},
    )  # fmt: skip
    fig.add_trace(band, row=row, col=col)
    fig.add_trace(line, row=row, col=col)


def _alpha(color: str) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},0.18)"


def _render_config_diff(keys: list[tuple[str, str]], configs: dict) -> None:
    st.subheader("Config diff")
    present = [k for k in keys if k in configs]
    differing = data.differing_keys([configs[k] for k in present])
    if not differing:
        st.caption("The configs are identical.")
        return
    flats = {label(k): data.flatten(configs[k]) for k in present}
    diff = pd.DataFrame({name: [str(flat.get(key, "—")) for key in differing] for name, flat in flats.items()})
    diff.insert(0, "key", differing)
    st.dataframe(diff, hide_index=True, width="stretch", key="cmp_config_diff")


def _render_examples(keys: list[tuple[str, str]]) -> None:
    st.subheader("Eval examples side by side")
    left, right = st.columns(2)
    a = left.selectbox("A", keys, index=0, format_func=label, key="cmp_ex_a")
    b = right.selectbox("B", keys, index=1, format_func=label, key="cmp_ex_b")
    step_a, step_b = data.latest_eval_step(*a), data.latest_eval_step(*b)
    if step_a is None or step_b is None:
        st.caption("One side has no eval results yet.")
        return
    pairs = data.paired_examples((*a, step_a), (*b, step_b))
    if pairs.empty:
        st.caption("No examples were scored by both sides.")
        return
    pairs["differs"] = (pairs["score_a"] != pairs["score_b"]) | (pairs["output_a"] != pairs["output_b"])
    only = st.toggle("Only differing examples", value=False, key="cmp_ex_only")
    shown = pairs[pairs["differs"]] if only else pairs
    st.caption(
        f"A at step {step_a}, B at step {step_b}: {int(pairs['differs'].sum())} of {len(pairs)} examples differ."
    )
    columns = ["suite", "metric", "example_id", "prompt", "reference", "score_a", "score_b", "output_a", "output_b"]
    styled = shown[columns].style.apply(
        lambda row: ["background-color: #fff3cd" if shown.loc[row.name, "differs"] else ""] * len(row), axis=1
    )
    st.dataframe(styled, hide_index=True, width="stretch", key="cmp_examples")
