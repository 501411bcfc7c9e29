"""Grafana: every panel, variable and annotation query, with the ClickHouse plugin's macros and
the dashboard variables expanded, runs on the real engine against a store filled by a real run
and returns rows; provisioning parses and every query names a provisioned datasource."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from lorafleet.store import open_store

GRAFANA = Path(__file__).resolve().parents[2] / "ui" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
CLICKHOUSE_TYPE = "grafana-clickhouse-datasource"


def expand(sql: str, variables: dict[str, list[str]], start: datetime, end: datetime, interval_s: int = 60) -> str:
    """Expand the plugin's macros (pkg/macros/macros.go) and Grafana's variable syntax the way Grafana does."""
    s, e = int(start.timestamp()), int(end.timestamp())
    s_ms, e_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    macros = {
        r"\$__timeFilter_ms\(([^)]+)\)": lambda m: (
            f"{m[1]} >= fromUnixTimestamp64Milli({s_ms}) AND {m[1]} <= fromUnixTimestamp64Milli({e_ms})"
        ),
        r"\$__timeFilter\(([^)]+)\)": lambda m: f"{m[1]} >= toDateTime({s}) AND {m[1]} <= toDateTime({e})",
        r"\$__dateFilter\(([^)]+)\)": lambda m: (
            f"{m[1]} >= toDate('{start:%Y-%m-%d}') AND {m[1]} <= toDate('{end:%Y-%m-%d}')"
        ),
        r"\$__timeInterval_ms\(([^)]+)\)": lambda m: (
            f"toStartOfInterval(toDateTime64({m[1]}, 3), INTERVAL {interval_s * 1000} millisecond)"
        ),
        r"\$__timeInterval\(([^)]+)\)": lambda m: (
            f"toStartOfInterval(toDateTime({m[1]}), INTERVAL {interval_s} second)"
        ),
        r"\$__fromTime_ms\b": lambda m: f"fromUnixTimestamp64Milli({s_ms})",
        r"\$__toTime_ms\b": lambda m: f"fromUnixTimestamp64Milli({e_ms})",
        r"\$__fromTime\b": lambda m: f"toDateTime({s})",
        r"\$__toTime\b": lambda m: f"toDateTime({e})",
        r"\$__interval_s\b": lambda m: str(interval_s),
    }
    for pattern, replace in macros.items():
        sql = re.sub(pattern, replace, sql)

    def variable(match: re.Match) -> str:
        name, fmt = match["name"] or match["bare"], match["fmt"]
        if name not in variables:
            raise AssertionError(f"unknown macro or variable ${name}")
        values = variables[name]
        if fmt == "singlequote":
            return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
        return ",".join(values)

    sql = re.sub(r"\$\{(?P<name>\w+)(?::(?P<fmt>\w+))?\}|\$(?P<bare>[A-Za-z_]\w*)", variable, sql)
    assert "$" not in sql, f"unexpanded macro or variable left in: {sql}"
    return sql


def test_expander_expands_macros_and_variables():
    t0, t1 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    sql = expand(
        "SELECT $__timeInterval(ts) FROM m WHERE run_id = '${run}' AND adapter IN (${adapter:singlequote}) "
        "AND $__timeFilter(ts) AND x < $__toTime",
        {"run": ["r1"], "adapter": ["a", "b"]},
        t0,
        t1,
    )
    assert "toStartOfInterval(toDateTime(ts), INTERVAL 60 second)" in sql
    assert "run_id = 'r1' AND adapter IN ('a','b')" in sql
    assert f"ts >= toDateTime({int(t0.timestamp())}) AND ts <= toDateTime({int(t1.timestamp())})" in sql
    with pytest.raises(AssertionError):
        expand("SELECT $__unknownMacro(ts)", {}, t0, t1)


def _queries(dashboard: dict):
    """Every ClickHouse query of a dashboard: (where, sql)."""
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            if target["datasource"]["type"] == CLICKHOUSE_TYPE:
                yield f"panel {panel['title']!r}", target["rawSql"]
    for var in dashboard["templating"]["list"]:
        if var.get("type") == "query":
            yield f"variable {var['name']!r}", var["query"]
    for annotation in dashboard["annotations"]["list"]:
        if "target" in annotation:
            yield f"annotation {annotation['name']!r}", annotation["target"]["rawSql"]


@pytest.mark.slow
@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_every_dashboard_query_returns_rows_on_the_real_engine(path, filled):
    dashboard = json.loads(path.read_text())
    store = open_store(filled.url)
    variables = {"run": [filled.run_id], "adapter": filled.adapters, "metric": ["loss"]}
    now = datetime.now(UTC)
    empty = []
    with store.session():
        for where, sql in _queries(dashboard):
            rows = store.query(expand(sql, variables, now - timedelta(days=1), now + timedelta(hours=1))).result_rows
            if not rows:
                empty.append(where)
    assert not empty, f"{path.name}: no rows from {empty}"


def _provisioned() -> dict[str, dict]:
    files = sorted((GRAFANA / "provisioning" / "datasources").glob("*.yaml"))
    assert files
    return {ds["uid"]: ds for f in files for ds in yaml.safe_load(f.read_text())["datasources"]}


def test_clickhouse_datasource_is_provisioned_in_otel_mode():
    sources = _provisioned()
    clickhouse = [ds for ds in sources.values() if ds["type"] == CLICKHOUSE_TYPE]
    assert len(clickhouse) == 1
    traces = clickhouse[0]["jsonData"]["traces"]
    assert traces["otelEnabled"] is True and traces["defaultTable"] == "otel_traces"
    assert clickhouse[0]["secureJsonData"]["password"] == "${CLICKHOUSE_PASSWORD}"  # from the environment
    assert any(ds["type"] == "prometheus" for ds in sources.values())


def test_dashboards_parse_and_reference_provisioned_datasources():
    sources = _provisioned()
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "lorafleet.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/lorafleet"
    assert {p.stem for p in DASHBOARDS} >= {"fleet-overview", "adapter-curves", "step-timing", "registry"}
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] not in uids
        uids.add(dashboard["uid"])
        refs = [t["datasource"] for p in dashboard["panels"] for t in p["targets"]]
        refs += [p["datasource"] for p in dashboard["panels"]]
        refs += [v["datasource"] for v in dashboard["templating"]["list"] if "datasource" in v]
        refs += [a["datasource"] for a in dashboard["annotations"]["list"] if a["datasource"]["uid"] != "-- Grafana --"]
        for target in (t for p in dashboard["panels"] for t in p["targets"]):
            if target["datasource"]["type"] == CLICKHOUSE_TYPE:  # the plugin's QueryType and sqlutil format codes
                assert (target["queryType"], target["format"]) in {("timeSeries", 0), ("table", 1), ("traces", 3)}
                assert target["editorType"] == "sql"
        for ref in refs:
            assert ref["uid"] in sources, f"{path.name}: unknown datasource uid {ref['uid']!r}"
            assert ref["type"] == sources[ref["uid"]]["type"]


def test_curves_dashboard_has_run_and_adapter_variables_and_registry_annotations():
    dashboard = json.loads((GRAFANA / "dashboards" / "adapter-curves.json").read_text())
    names = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"run", "adapter"} <= set(names) and names["adapter"]["multi"]
    assert any(
        "registry_alias_events" in a.get("target", {}).get("rawSql", "") for a in dashboard["annotations"]["list"]
    )


@pytest.mark.slow
def test_live_prometheus_panels_return_series_from_a_real_scrape(filled):
    """Each PromQL panel, as the range query Grafana sends, over what a real Prometheus server
    scraped from the trainer's /metrics during the run."""
    dashboard = json.loads((GRAFANA / "dashboards" / "fleet-overview.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"] if t["datasource"]["type"] == "prometheus"]
    assert len(exprs) >= 4
    end = datetime.now(UTC)
    empty = []
    for expr in exprs:
        query = urllib.parse.urlencode(
            {"query": expr, "start": (end - timedelta(minutes=15)).timestamp(), "end": end.timestamp(), "step": "1"}
        )
        with urllib.request.urlopen(f"{filled.prometheus}/api/v1/query_range?{query}", timeout=30) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        if not any(series["values"] for series in body["data"]["result"]):
            empty.append(expr)
    assert not empty, f"no samples for {empty}"
