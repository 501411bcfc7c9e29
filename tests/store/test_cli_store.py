import json

from typer.testing import CliRunner

from lorafleet.ui.cli import app

runner = CliRunner()


def test_store_info_reports_engine_version_and_row_counts(lorafleet_home):
    result = runner.invoke(app, ["store", "info", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["url"] == f"chdb://{lorafleet_home / 'clickhouse'}"
    assert info["engine"] == "chdb (embedded)"
    assert info["version"].count(".") >= 2
    assert info["rows"]["metrics"] == 0


def test_store_migrate_twice_applies_nothing_the_second_time(lorafleet_home):
    url = f"chdb://{lorafleet_home / 'elsewhere'}"
    first = runner.invoke(app, ["store", "migrate", "--store", url, "--json"])
    second = runner.invoke(app, ["store", "migrate", "--store", url, "--json"])
    assert first.exit_code == second.exit_code == 0
    assert len(json.loads(first.stdout)["applied"]) >= 3
    assert json.loads(second.stdout)["applied"] == []


def test_unreachable_server_fails_without_leaking_the_password():
    result = runner.invoke(app, ["store", "info", "--store", "http://admin:hunter2@127.0.0.1:9/db"])
    assert result.exit_code == 1
    assert "unreachable" in result.output or "cannot reach" in result.output
    assert "hunter2" not in result.output
    assert "admin:***@127.0.0.1:9/db" in result.output


def test_bad_store_url_is_bad_input():
    result = runner.invoke(app, ["store", "info", "--store", "chdb://relative"])
    assert result.exit_code == 2
    assert "absolute path" in result.output


def test_runs_and_adapters_list_what_the_store_holds(store_url):
    from datetime import UTC, datetime

    from lorafleet.store import metrics, open_store, runs

    store = open_store(store_url)
    runs.upsert_run(store, runs.RunRow(run_id="run-1", base_model="tiny", status="finished"))
    runs.upsert_adapters(
        store,
        [runs.AdapterRow("run-1", "a1", family="fam", status="finished"), runs.AdapterRow("run-1", "a2", family="fam")],
    )
    metrics.write_points(store, [("run-1", "a1", "loss", 5, 0.25, datetime.now(UTC))])
    listed = runner.invoke(app, ["runs", "--store", store_url, "--json"])
    assert listed.exit_code == 0, listed.output
    assert [r["run_id"] for r in json.loads(listed.stdout)] == ["run-1"]
    adapters = runner.invoke(app, ["adapters", "run-1", "--store", store_url, "--json", "--status", "finished"])
    assert adapters.exit_code == 0, adapters.output
    rows = json.loads(adapters.stdout)
    assert [(r["adapter"], r["loss"]) for r in rows] == [("a1", 0.25)]
    unknown = runner.invoke(app, ["adapters", "no-such-run", "--store", store_url])
    assert unknown.exit_code == 2 and "no-such-run" in unknown.output
