"""The promote gate: paired deltas, bootstrap intervals, orientation, tolerance, gating metrics."""

from __future__ import annotations

import numpy as np
import pytest

from lorafleet.errors import GateRefused
from lorafleet.store import registry as reg
from lorafleet.store.evals import EvalRow, write_evals


def test_paired_bootstrap_is_deterministic_and_brackets_the_mean():
    deltas = np.random.default_rng(7).normal(0.2, 1.0, size=300)
    low, high = reg.paired_bootstrap(deltas)
    assert (low, high) == reg.paired_bootstrap(deltas), "fixed seed: same interval every time"
    assert low < deltas.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * deltas.std() / np.sqrt(300), rel=0.2)
    assert reg.paired_bootstrap(np.full(10, -0.5)) == (-0.5, -0.5)


def test_lower_is_better_metrics_are_oriented_so_regression_means_worse(store, seeder):
    seeder.run("run-1", {"good": 0.8, "worse": 0.5})
    reg.register_run(store, "run-1")

    worse = {r.metric: r for r in reg.compare(store, "support-bot", 1, 2).rows}
    assert worse["eval_loss"].candidate_mean > worse["eval_loss"].baseline_mean  # higher loss ...
    assert worse["eval_loss"].delta == pytest.approx(-0.3)  # ... is a negative (worse) delta
    assert worse["eval_loss"].regression and worse["exact_match"].regression
    assert worse["exact_match"].ci_high < 0 and worse["exact_match"].n == 40

    better = reg.compare(store, "support-bot", 2, 1)
    assert better.verdict == "pass" and all(r.delta > 0 and not r.regression for r in better.rows)


def test_tolerance_and_gating_metrics_decide_what_blocks(store, seeder):
    seeder.run("run-1", {"good": 0.8, "worse": 0.5})
    reg.register_run(store, "run-1")
    assert reg.compare(store, "support-bot", 1, 2, tolerance=0.5).verdict == "pass"
    only_em = reg.compare(store, "support-bot", 1, 2, gating=["exact_match"])
    flags = {r.metric: (r.gating, r.regression) for r in only_em.rows}
    assert flags == {"exact_match": (True, True), "eval_loss": (False, False)}


def test_no_shared_examples_refuses_unless_forced_with_a_reason(store, seeder):
    seeder.run("run-1", {"good": 0.8})
    seeder.run("run-2", {"elsewhere": 0.9})
    store.command("ALTER TABLE evals DELETE WHERE run_id = 'run-2'", settings={"mutations_sync": 2})
    write_evals(store, [EvalRow("run-2", "elsewhere", 10, "other-suite", "exact_match", "x1", 1.0)])
    reg.register_run(store, "run-1")
    reg.register_run(store, "run-2")
    reg.promote(store, "support-bot", 1, "production")

    with pytest.raises(GateRefused, match="no eval examples pair") as refused:
        reg.promote(store, "support-bot", 2, "production")
    assert refused.value.report.verdict == "no-evidence" and refused.value.report.rows == ()
    event = reg.promote(store, "support-bot", 2, "production", force=True, reason="new suite, checked by hand")
    assert (event.gate_verdict, event.reason) == ("forced-no-evidence", "new suite, checked by hand")
