"""Registry: families, versions with lineage, aliases, the audit timeline; promote and rollback
(operator only) through the same store.registry functions, gate included, as the CLI."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from lorafleet.errors import GateRefused, LorafleetError
from lorafleet.ui.console import data

LINEAGE = ["version", "run_id", "adapter", "content_sha256", "base_model", "code_revision", "eval_step",
           "created_by", "created_at", "artifact_path"]  # fmt: skip
PLAN_KEY = "registry_plan"
FLASH_KEY = "registry_flash"


def render() -> None:
    st.title("Registry")
    with data.page_session():
        if not data.registry_available() or not data.families():
            st.info("No registered versions yet. Register a run with `lorafleet register RUN_ID` or `lorafleet demo`.")
            return
        family = st.selectbox("Family", data.families(), key="regy_family")
        versions = data.versions(family)
        aliases = data.aliases(family)
        events = data.history(family)
    _render_aliases(aliases)
    _render_versions(versions, aliases)
    actor = data.operator_actor()
    if actor:
        _render_promote(family, versions, actor)
        _render_rollback(family, aliases, versions, actor)
    _render_timeline(events)


def _render_aliases(aliases: dict[str, int]) -> None:
    st.subheader("Aliases")
    if not aliases:
        st.caption("No alias points at a version of this family yet.")
        return
    cols = st.columns(min(len(aliases), 6))
    for col, (alias, version) in zip(cols, sorted(aliases.items()), strict=False):
        col.metric(alias, f"v{version}")


def _render_versions(versions: pd.DataFrame, aliases: dict[str, int]) -> None:
    st.subheader("Versions and lineage")
    view = versions[[c for c in LINEAGE if c in versions.columns]].copy()
    held = {}
    for alias, version in aliases.items():
        held.setdefault(version, []).append(alias)
    view.insert(1, "aliases", view["version"].map(lambda v: ", ".join(sorted(held.get(int(v), [])))))
    for column in ("content_sha256", "code_revision"):
        if column in view.columns:
            view[column] = view[column].astype(str).str[:12]
    if "dataset_hashes" in versions.columns:
        view.insert(
            5,
            "datasets",
            versions["dataset_hashes"].map(lambda d: ", ".join(f"{k}:{v[:8]}" for k, v in (d or {}).items())),
        )
    st.dataframe(view.sort_values("version", ascending=False), hide_index=True, width="stretch", key="regy_versions")


def _render_promote(family: str, versions: pd.DataFrame, actor: str) -> None:
    st.subheader("Promote")
    with st.form("promote_form"):
        left, right = st.columns(2)
        numbers = sorted(versions["version"].astype(int), reverse=True)
        version = left.selectbox("Version", numbers, format_func="v{}".format, key="pr_version")
        alias = right.text_input("Alias", value="production", key="pr_alias")
        reason = st.text_input("Reason (recorded in the audit trail)", key="pr_reason")
        force = st.checkbox("Force past a failing gate (needs a reason)", key="pr_force")
        if st.form_submit_button("Check gate"):
            _plan(lambda: data.plan_promote(family, int(version), alias.strip(), reason, actor, force=force))
    _render_pending("promote")


def _render_rollback(family: str, aliases: dict[str, int], versions: pd.DataFrame, actor: str) -> None:
    st.subheader("Rollback")
    if not aliases:
        st.caption("Nothing to roll back: no alias is set.")
        return
    with st.form("rollback_form"):
        left, right = st.columns(2)
        alias = left.selectbox("Alias", sorted(aliases), key="rb_alias")
        options = [None, *sorted(versions["version"].astype(int), reverse=True)]
        to = right.selectbox(
            "To", options, format_func=lambda v: "the version it held before" if v is None else f"v{v}", key="rb_to"
        )
        reason = st.text_input("Reason (recorded in the audit trail)", key="rb_reason")
        if st.form_submit_button("Check rollback"):
            _plan(lambda: data.plan_rollback(family, alias, reason, actor, to=to))
    _render_pending("rollback")


def _plan(make_plan) -> None:
    """Run the registry's checks (gate included) and keep the plan until the operator confirms it."""
    st.session_state.pop(PLAN_KEY, None)
    try:
        st.session_state[PLAN_KEY] = make_plan()
    except GateRefused as exc:
        st.error(f"Refused by the gate: {exc}")
        if exc.report is not None:
            st.dataframe(data.report_metrics(exc.report.to_dict()), hide_index=True, width="stretch")
    except LorafleetError as exc:
        st.error(str(exc))


def _render_pending(action: str) -> None:
    plan = st.session_state.get(PLAN_KEY)
    if plan is None or (plan.action == "promote") != (action == "promote"):
        return
    frm = "nothing" if plan.from_version is None else f"v{plan.from_version}"
    with st.container(border=True):
        st.markdown(
            f"**Confirm {plan.action}**: `{plan.family}@{plan.alias}` from {frm} to **v{plan.to_version}** "
            f"— gate: `{plan.gate_verdict}`, actor `{plan.actor}`, reason: {plan.reason or '—'}"
        )
        if plan.report is not None:
            st.dataframe(data.report_metrics(plan.report.to_dict()), hide_index=True, width="stretch")
        left, right = st.columns(2)
        if left.button(f"Confirm {plan.action}", type="primary", key=f"confirm_{action}"):
            _apply(plan)
        if right.button("Cancel", key=f"cancel_{action}"):
            st.session_state.pop(PLAN_KEY, None)
            st.rerun()


def _apply(plan) -> None:
    st.session_state.pop(PLAN_KEY, None)
    try:
        event = data.apply_move(plan)
    except LorafleetError as exc:  # e.g. Conflict: someone moved the alias since the check
        st.error(str(exc))
        return
    st.session_state[FLASH_KEY] = (
        f"{event.action}: {event.family}@{event.alias} is now v{event.to_version} (by {event.actor})"
    )
    st.rerun()


def _render_timeline(events: pd.DataFrame) -> None:
    st.subheader("Audit timeline")
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash:
        st.success(flash)
    if events.empty:
        st.caption("No alias has moved yet.")
        return
    events = events.sort_values("ts")
    fig = px.scatter(
        events, x="ts", y="alias", color="action", symbol="action", hover_data=["to_version", "actor", "reason"]
    )
    fig.update_traces(marker={"size": 12})
    fig.update_layout(height=220, margin={"l": 10, "r": 10, "t": 10, "b": 10})
    st.plotly_chart(fig, width="stretch", key="regy_timeline_fig")
    columns = [c for c in ("ts", "alias", "action", "from_version", "to_version", "actor", "reason", "gate_verdict")
               if c in events.columns]  # fmt: skip
    st.dataframe(events[columns].sort_values("ts", ascending=False), hide_index=True, width="stretch", key="regy_audit")
