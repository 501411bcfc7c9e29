"""The console in a real browser (Debian's chromium via Playwright) over a store filled by a
real training run: pages load, show the fleet, draw curves, flag the bad variant, and
promote/rollback from the console reach the store through the registry."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from lorafleet.store import metrics, open_store, registry, runs

pytestmark = [pytest.mark.slow, pytest.mark.browser]

PAGES = {
    "fleet": "Fleet",
    "compare": "Compare",
    "regressions": "Regressions",
    "registry": "Registry",
    "traces": "Traces",
}
WRITE_CONTROLS = ("Check gate", "Check rollback", "Confirm promote", "Confirm rollback")


def open_page(page, console, name: str) -> None:
    """Load a page and wait until Streamlit has finished running its script."""
    page.goto(f"{console.url}/{'' if name == 'fleet' else name}")  # the default page lives at /
    page.get_by_role("heading", name=PAGES[name], exact=True).first.wait_for(timeout=30_000)
    settle(page)


def settle(page) -> None:
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=30_000)
    page.wait_for_timeout(300)


def assert_no_exception(page) -> None:
    errors = page.locator('[data-testid="stException"]')
    assert errors.count() == 0, errors.first.inner_text()
    assert page.get_by_text("Page not found").count() == 0


def test_every_page_loads_without_exception(page, console, artifacts):
    for name in PAGES:
        open_page(page, console, name)
        assert_no_exception(page)
        page.screenshot(path=str(artifacts / f"console-{name}.png"), full_page=True)


def test_fleet_page_lists_every_adapter(page, console, filled):
    open_page(page, console, "fleet")
    cells = grid_texts(page, page.locator('[data-testid="stDataFrame"]').first)
    for adapter in filled.adapters:
        assert adapter in cells, f"{adapter} missing from the fleet table"


def grid_texts(page, grid) -> set[str]:
    """The cell texts of an st.dataframe (its canvas grid keeps an accessible table in the DOM)."""
    cells = grid.locator('td[role="gridcell"]')
    cells.first.wait_for(state="attached", timeout=30_000)
    return {text.strip() for text in cells.all_text_contents()}


def test_fleet_page_refreshes_itself_while_a_run_is_live(page, store, store_url, lorafleet_home, console_for):
    now = datetime.now(UTC)
    runs.upsert_run(store, runs.RunRow(run_id="live-run", status="running", started_at=now))
    runs.upsert_adapters(store, [runs.AdapterRow("live-run", "live-a", "fam", "running")])
    metrics.write_points(store, [("live-run", "live-a", "loss", 1, 4.25, now)])
    server = console_for(store_url, lorafleet_home)
    open_page(page, server, "fleet")
    page.get_by_text("refreshes every").wait_for()
    assert "4.25" in grid_texts(page, page.locator('[data-testid="stDataFrame"]').first)
    metrics.write_points(store, [("live-run", "live-a", "loss", 2, 3.125, now + timedelta(seconds=1))])
    deadline = time.monotonic() + 20  # no reload: the fragment re-runs on its own
    while "3.125" not in grid_texts(page, page.locator('[data-testid="stDataFrame"]').first):
        assert time.monotonic() < deadline, "the live fleet table never showed the new loss"
        page.wait_for_timeout(250)


def test_compare_draws_overlaid_curves(page, console):
    open_page(page, console, "compare")
    page.locator('[data-testid="stPlotlyChart"] .main-svg .scatterlayer .trace').first.wait_for(timeout=30_000)
    titles = set(page.locator('[data-testid="stPlotlyChart"] .annotation-text').all_text_contents())
    assert {"loss", "grad_norm", "learning_rate"} <= titles  # one subplot per metric (+ eval metrics)
    assert page.locator(".main-svg .scatterlayer .trace").count() >= 2 * 2 * 3  # 2 adapters x (band + line) x 3
    assert page.get_by_text("Config diff").count() == 1
    assert_no_exception(page)


def test_bad_variant_shows_as_regression(page, console, filled):
    open_page(page, console, "regressions")
    alert = page.locator('[data-testid="stAlertContentError"]').filter(has_text="flagged as broken")
    alert.wait_for(timeout=30_000)
    assert "beta-bad" in alert.inner_text()
    assert "alpha-lr3" not in alert.inner_text()


def test_read_only_console_offers_no_write_control(page, console, operator_console):
    for server in (console, operator_console):  # no token configured; configured but not entered
        open_page(page, server, "registry")
        page.get_by_text("Versions and lineage").wait_for()
        for label in WRITE_CONTROLS:
            assert page.get_by_role("button", name=label, exact=True).count() == 0, f"{label} offered read-only"
        assert page.get_by_text("Reason (recorded in the audit trail)").count() == 0
        assert page.get_by_role("heading", name="Promote").count() == 0
    assert page.get_by_role("button", name="Unlock writes").count() == 1  # only on the token-configured console


def test_operator_promote_and_rollback_reach_store_and_audit(page, operator_console, operator_token, filled, artifacts):
    store = open_store(filled.url)
    before = registry.aliases(store, "alpha")["production"]
    target = next(int(v.version) for v in registry.list_versions(store, "alpha") if v.version != before)

    open_page(page, operator_console, "registry")
    sign_in(page, operator_token)
    choose(page, "Version", f"v{target}")
    page.get_by_label("Reason (recorded in the audit trail)").first.fill("ui test: promote")
    page.get_by_role("button", name="Check gate").click()
    settle(page)
    if page.get_by_text("Refused by the gate").count():  # the gate said no: force it, with the reason recorded
        page.get_by_text("Force past a failing gate").click()
        page.get_by_role("button", name="Check gate").click()
        settle(page)
    page.get_by_role("button", name="Confirm promote").click()
    settle(page)
    assert registry.aliases(store, "alpha")["production"] == target
    assert_cell_appears(page, "ui test: promote")
    page.screenshot(path=str(artifacts / "console-registry-promoted.png"), full_page=True)

    page.get_by_label("Reason (recorded in the audit trail)").last.fill("ui test: rollback")
    page.get_by_role("button", name="Check rollback").click()
    settle(page)
    page.get_by_role("button", name="Confirm rollback").click()
    settle(page)
    assert registry.aliases(store, "alpha")["production"] == before
    last = registry.history(store, "alpha", "production")[-1]
    assert (last.action, last.actor, last.reason) == ("rollback", "console:tester", "ui test: rollback")
    assert_cell_appears(page, "ui test: rollback")
    page.screenshot(path=str(artifacts / "console-registry-rolled-back.png"), full_page=True)


def assert_cell_appears(page, text: str, timeout_s: float = 20.0) -> None:
    """The audit table (the page's last st.dataframe) shows `text` once the rerun after a write lands."""
    deadline = time.monotonic() + timeout_s
    while True:
        cells = grid_texts(page, page.locator('[data-testid="stDataFrame"]').last)
        if text in cells:
            return
        assert time.monotonic() < deadline, f"{text!r} never appeared in the audit timeline: {sorted(cells)}"
        page.wait_for_timeout(250)


def sign_in(page, token: str) -> None:
    page.get_by_label("Your name (recorded as the actor)").fill("tester")
    page.get_by_label("Operator token").fill(token)
    page.get_by_role("button", name="Unlock writes").click()
    page.get_by_text("operator: console:tester").wait_for(timeout=15_000)
    settle(page)


def choose(page, label: str, option: str) -> None:
    """Pick an option of a Streamlit selectbox (a searchable combobox): type it, press Enter."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has=page.get_by_text(label, exact=True)).first
    if box.get_by_text(option, exact=True).count():
        return
    box.locator("input").click()
    page.keyboard.type(option)
    page.keyboard.press("Enter")
    settle(page)
