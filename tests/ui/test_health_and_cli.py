"""Health flags (pure rules over health_stats rows), the demo's best-version pick, and the
console command's input checks."""

from __future__ import annotations

import math
from types import SimpleNamespace

from typer.testing import CliRunner

from lorafleet.store import registry
from lorafleet.ui.cli import app
from lorafleet.ui.cli.console_cmd import best_version
from lorafleet.ui.console import health

HEALTHY = {"status": "finished", "loss_first": 5.0, "loss_min": 3.0, "loss_last": 3.1, "loss_nonfinite": 0,
           "grad_median": 1.0, "grad_max": 3.0, "tokens_per_s": 1000.0, "prev_tokens_per_s": 1050.0}  # fmt: skip


def test_healthy_adapter_raises_no_flag():
    assert health.flags(HEALTHY) == []


def test_each_health_rule_raises_its_flag():
    assert health.flags(HEALTHY | {"loss_last": 7.0}) == ["divergence"]
    assert health.flags(HEALTHY | {"loss_last": math.nan, "loss_nonfinite": 1}) == ["divergence", "nan_quarantine"]
    assert health.flags(HEALTHY | {"status": "quarantined"}) == ["nan_quarantine"]
    assert health.flags(HEALTHY | {"grad_max": 40.0}) == ["grad_norm_spikes"]
    assert health.flags(HEALTHY | {"grad_median": 0.0, "grad_max": 0.0}) == ["vanished_gradients"]
    assert health.flags(HEALTHY | {"tokens_per_s": 500.0}) == ["throughput_drop"]
    assert health.flags(HEALTHY | {"prev_tokens_per_s": None, "tokens_per_s": 1.0}) == []


def test_demo_picks_the_best_eval_respecting_metric_direction():
    def version(n, exact, loss, suite="s"):
        rows = [
            {"suite": suite, "metric": "exact_match", "mean": exact},
            {"suite": suite, "metric": "zz_loss", "mean": loss},
        ]
        return SimpleNamespace(version=n, eval_summary=rows)

    versions = [
        version(1, 0.5, 1.0),
        version(2, 0.7, 2.0),
        version(3, 0.7, 0.9),
        SimpleNamespace(version=4, eval_summary=[]),
    ]
    assert best_version(versions, registry.higher_is_better).version == 3
    assert best_version([versions[3]], registry.higher_is_better) is None
    # versions evaluated on different suites (tasks) still compare, metric by metric
    assert (
        best_version([version(1, 0.1, 3.0, "reverse"), version(2, 0.4, 2.0, "sort")], registry.higher_is_better).version
        == 2
    )


def test_console_command_rejects_bad_port_and_store_with_exit_2():
    runner = CliRunner()
    assert runner.invoke(app, ["console", "--port", "70000"]).exit_code == 2
    result = runner.invoke(app, ["console", "--store", "ftp://nowhere"])
    assert result.exit_code == 2
