from lorafleet.store import MIGRATIONS, migrate, open_store, render
from lorafleet.store.migrations import applied_versions


def test_first_use_of_an_empty_store_applies_every_migration(store_url):
    store = open_store(store_url)
    assert applied_versions(store) == {m.version for m in MIGRATIONS}
    tables = {r[0] for r in store.query("SHOW TABLES").result_rows}
    assert {
        "runs",
        "adapters",
        "metrics",
        "metrics_latest",
        "evals",
        "otel_traces",
        "otel_traces_trace_id_ts",
    } <= tables
    assert {"registry_versions", "registry_alias_events"} <= tables


def test_migrate_is_idempotent_and_recorded_once(store):
    assert migrate(store) == []
    assert migrate(store) == []
    rows = store.query("SELECT version, count() FROM schema_migrations FINAL GROUP BY version").result_rows
    assert all(count == 1 for _, count in rows)
    assert len(rows) == len(MIGRATIONS)


def test_otel_traces_matches_the_collector_exporter_schema(store):
    columns = dict(store.query("SELECT name, type FROM system.columns WHERE table = 'otel_traces'").result_rows)
    assert columns["Timestamp"] == "DateTime64(9)"
    assert columns["ResourceAttributes"] == "Map(LowCardinality(String), String)"
    assert columns["Duration"] == "UInt64"
    assert columns["Events.Name"] == "Array(LowCardinality(String))"
    assert columns["Links.TraceId"] == "Array(String)"
    lookup = dict(
        store.query("SELECT name, type FROM system.columns WHERE table = 'otel_traces_trace_id_ts'").result_rows
    )
    assert lookup == {"TraceId": "String", "Start": "DateTime", "End": "DateTime"}


def test_cluster_rendering_uses_on_cluster_and_replicated_engines():
    for migration in MIGRATIONS:
        for statement in migration.statements:
            single = render(statement)
            clustered = render(statement, "analytics")
            assert "{" not in single and "{" not in clustered  # every template placeholder rendered
            assert "ON CLUSTER" not in single and "Replicated" not in single
            assert "ON CLUSTER analytics" in clustered
            if "ENGINE" in statement:
                assert "ENGINE = Replicated" in clustered


def test_cluster_name_is_validated():
    import pytest

    from lorafleet.errors import BadInput

    with pytest.raises(BadInput, match="cluster name"):
        render(MIGRATIONS[0].statements[0], "x; DROP TABLE runs")
