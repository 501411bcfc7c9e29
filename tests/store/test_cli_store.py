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
