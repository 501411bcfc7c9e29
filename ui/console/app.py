"""The console's entrypoint: `streamlit run app.py` calls `run()`, which routes to the pages.

Run it with `lorafleet console [--port 8501] [--store URL]`.
"""

from __future__ import annotations

import getpass

import streamlit as st

from lorafleet.errors import StoreUnavailable
from lorafleet.ui.console import data
from lorafleet.ui.console.views import compare, fleet, registry, regressions, traces

OPERATOR_KEY = data.OPERATOR_KEY


def pages() -> list:
    return [
        st.Page(fleet.render, title="Fleet", icon=":material/dashboard:", url_path="fleet", default=True),
        st.Page(compare.render, title="Compare", icon=":material/compare_arrows:", url_path="compare"),
        st.Page(regressions.render, title="Regressions", icon=":material/trending_down:", url_path="regressions"),
        st.Page(registry.render, title="Registry", icon=":material/inventory_2:", url_path="registry"),
        st.Page(traces.render, title="Traces", icon=":material/timeline:", url_path="traces"),
    ]


def run() -> None:
    st.set_page_config(page_title="lorafleet console", page_icon=":material/hub:", layout="wide")
    navigation = st.navigation(pages())
    try:
        _render_sidebar()
        navigation.run()
    except StoreUnavailable as exc:  # e.g. a trainer held the embedded store's lock too long
        st.error(f"The store is unavailable right now: {exc}. Reload the page to try again.")


def _render_sidebar() -> None:
    with st.sidebar:
        st.caption(f"store: `{data.store_label()}`")
        if not data.token_configured():
            st.session_state.pop(OPERATOR_KEY, None)
            st.caption("Read-only: no operator token is configured (LORAFLEET_CONSOLE_TOKEN).")
            return
        _render_operator_login()


def _render_operator_login() -> None:
    if st.session_state.get(OPERATOR_KEY):
        st.success(f"operator: {st.session_state[OPERATOR_KEY]}")
        if st.button("Sign out", key="sign_out"):
            st.session_state.pop(OPERATOR_KEY, None)
            st.rerun()
        return
    with st.form("operator_login"):
        name = st.text_input("Your name (recorded as the actor)", value=getpass.getuser())
        token = st.text_input("Operator token", type="password")
        if st.form_submit_button("Unlock writes"):
            if data.token_matches(token) and name.strip():
                st.session_state[OPERATOR_KEY] = f"console:{name.strip()}"
                st.rerun()
            st.error("Wrong token (or empty name): the console stays read-only.")


if __name__ == "__main__":
    run()
