"""Alias moves: first promotion, gate refusal and force, rollback, point-in-time reads, stale plans."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from lorafleet.errors import BadInput, Conflict, GateRefused, NotFound, Refused
from lorafleet.store import registry as reg


@pytest.fixture
def family(store, seeder):
    """support-bot v1 (good), v2 (worse), v3 (as good as v1)."""
    seeder.run("run-1", {"a-good": 0.8, "b-worse": 0.5, "c-good": 0.8})
    return [v.version for v in reg.register_run(store, "run-1")]


def _now() -> datetime:
    time.sleep(0.002)  # events and probes get distinct microsecond timestamps
    moment = datetime.now(UTC)
    time.sleep(0.002)
    return moment


def test_first_promotion_shows_the_candidates_own_evals(store, family):
    event = reg.promote(store, "support-bot", 1, "production", reason="launch", actor="alice")
    assert (event.seq, event.from_version, event.to_version, event.gate_verdict) == (1, None, 1, "first")
    report = event.gate_report
    assert report["baseline"] is None
    assert {(r["metric"], round(r["candidate_mean"], 6)) for r in report["rows"]} == {
        ("exact_match", 0.8),
        ("eval_loss", 1.22875),
    }
    assert reg.lookup(store, "support-bot@production").version == 1


def test_regression_is_refused_with_its_table_and_force_records_the_reason(store, family):
    reg.promote(store, "support-bot", 1, "production")
    with pytest.raises(GateRefused, match="regression against version 1") as refused:
        reg.promote(store, "support-bot", 2, "production")
    assert {r.metric for r in refused.value.report.regressions} == {"exact_match", "eval_loss"}
    assert reg.alias_head(store, "support-bot", "production").to_version == 1, "a refusal writes nothing"

    with pytest.raises(BadInput, match="--reason"):
        reg.promote(store, "support-bot", 2, "production", force=True)
    forced = reg.promote(store, "support-bot", 2, "production", force=True, reason="hotfix", actor="bob")
    assert (forced.gate_verdict, forced.reason, forced.actor, forced.from_version) == (
        "forced-regression", "hotfix", "bob", 1,
    )  # fmt: skip
    assert forced.gate_report["verdict"] == "regression" and forced.gate_report["rows"]


def test_rollback_walks_back_through_history_then_to_a_named_version(store, family):
    for version in (1, 3):
        reg.promote(store, "support-bot", version, "production")
    reg.promote(store, "support-bot", 2, "production", force=True, reason="experiment")
    assert reg.rollback(store, "support-bot", "production", reason="bad", actor="carol").to_version == 3
    assert reg.rollback(store, "support-bot", "production").to_version == 1
    with pytest.raises(Refused, match="no earlier version"):
        reg.rollback(store, "support-bot", "production")
    to = reg.rollback(store, "support-bot", "production", to=2, reason="pin")
    assert (to.action, to.from_version, to.to_version) == ("rollback_to", 1, 2)
    assert reg.rollback(store, "support-bot", "production").to_version == 1

    events = reg.history(store, "support-bot", "production")
    assert [(e.action, e.from_version, e.to_version) for e in events] == [
        ("promote", None, 1), ("promote", 1, 3), ("promote", 3, 2),
        ("rollback", 2, 3), ("rollback", 3, 1), ("rollback_to", 1, 2), ("rollback", 2, 1),
    ]  # fmt: skip
    assert (events[3].actor, events[3].reason, events[3].gate_verdict) == ("carol", "bad", "not-gated")
    assert [e.seq for e in events] == list(range(1, 8))


def test_alias_at_answers_what_each_alias_pointed_at_each_moment(store, family):
    before = _now()
    reg.promote(store, "support-bot", 1, "production")
    after_first = _now()
    reg.promote(store, "support-bot", 3, "production")
    reg.promote(store, "support-bot", 2, "staging", reason="try")
    after_second = _now()
    reg.rollback(store, "support-bot", "production")
    after_rollback = _now()

    moments = (before, after_first, after_second, after_rollback)
    assert [reg.alias_at(store, "support-bot", "production", t) for t in moments] == [None, 1, 3, 1]
    assert reg.aliases(store, "support-bot", after_first) == {"production": 1}
    assert reg.aliases(store, "support-bot", after_second) == {"production": 3, "staging": 2}
    assert [e.seq for e in reg.history(store, "support-bot", "production", at=after_second)] == [1, 2]
    with pytest.raises(BadInput, match="future"):
        reg.alias_at(store, "support-bot", "production", datetime(2999, 1, 1, tzinfo=UTC))


def test_a_plan_applied_after_the_alias_moved_gets_conflict_and_is_recorded(store, family):
    reg.promote(store, "support-bot", 1, "production")
    mine = reg.plan_promote(store, "support-bot", 3, "production", actor="slow")
    theirs = reg.plan_promote(store, "support-bot", 2, "production", actor="fast", force=True, reason="race")
    reg.apply_move(store, theirs)
    with pytest.raises(Conflict, match="conflict: alias 'production'.*fast moved it to version 2") as lost:
        reg.apply_move(store, mine)
    assert lost.value.exit_code == 3
    assert reg.lookup(store, "support-bot@production").version == 2
    assert [e.actor for e in reg.history(store, "support-bot", "production")][-1] == "fast"
    [conflict] = reg.conflicts(store, "support-bot", "production")
    assert (conflict["seq"], conflict["actor"], conflict["to_version"]) == (2, "slow", 3)


def test_unknown_names_are_not_found_and_write_nothing(store, family):
    reg.promote(store, "support-bot", 1, "production")
    with pytest.raises(NotFound, match="'nosuch'"):
        reg.promote(store, "nosuch", 1, "production")
    with pytest.raises(NotFound, match="unknown alias 'canary'"):
        reg.rollback(store, "support-bot", "canary")
    with pytest.raises(NotFound, match="'canary'"):
        reg.resolve(store, "support-bot@canary")
    with pytest.raises(BadInput, match="invalid alias"):
        reg.promote(store, "support-bot", 2, "prod/../x")
    with pytest.raises(BadInput, match="already points at version 1"):
        reg.promote(store, "support-bot", 1, "production")
    assert len(reg.history(store, "support-bot")) == 1
