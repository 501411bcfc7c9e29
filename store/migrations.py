"""Versioned, idempotent schema migrations, recorded in `schema_migrations`.

Each migration is a list of DDL templates. `{on_cluster}` renders `ON CLUSTER name` and
`{engine:X}` renders `X` or its Replicated twin when a cluster name is given, so users who
outgrow one server keep the same schema. DDL carries no values, only vetted identifiers.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from lorafleet.store.engine import Store, check_identifier

CLUSTER_ENV = "LORAFLEET_STORE_CLUSTER"
MIGRATIONS_TABLE = "schema_migrations"

# Retried batches carry an insert_deduplication_token; the window is how many recent blocks
# the table remembers. Registry slots use the same mechanism as a compare-and-set.
DEDUP = "non_replicated_deduplication_window = 10000"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


CORE_TABLES = (
    """CREATE TABLE IF NOT EXISTS runs {on_cluster} (
        run_id String,
        name String,
        status LowCardinality(String),
        base_model String,
        base_model_sha256 String,
        spec String,
        host String,
        pid UInt32,
        code_revision String,
        started_at DateTime64(6, 'UTC'),
        finished_at Nullable(DateTime64(6, 'UTC')),
        updated_at DateTime64(6, 'UTC')
    ) ENGINE = {engine:ReplacingMergeTree(updated_at)}
    ORDER BY run_id""",
    """CREATE TABLE IF NOT EXISTS adapters {on_cluster} (
        run_id String,
        adapter String,
        family LowCardinality(String),
        status LowCardinality(String),
        status_reason String,
        config String,
        dataset_sha256 String,
        step UInt64,
        artifact_path String,
        updated_at DateTime64(6, 'UTC')
    ) ENGINE = {engine:ReplacingMergeTree(updated_at)}
    ORDER BY (run_id, adapter)""",
    """CREATE TABLE IF NOT EXISTS metrics {on_cluster} (
        run_id LowCardinality(String),
        adapter LowCardinality(String),
        metric LowCardinality(String),
        step UInt64,
        value Float64,
        ts DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1))
    ) ENGINE = {engine:ReplacingMergeTree}
    ORDER BY (run_id, adapter, metric, step)
    SETTINGS {dedup}""",
    # The fleet page asks for the latest value of every series; this keeps it one tiny read.
    """CREATE TABLE IF NOT EXISTS metrics_latest {on_cluster} (
        run_id LowCardinality(String),
        adapter LowCardinality(String),
        metric LowCardinality(String),
        step SimpleAggregateFunction(max, UInt64),
        value AggregateFunction(argMax, Float64, UInt64),
        ts SimpleAggregateFunction(max, DateTime64(6, 'UTC'))
    ) ENGINE = {engine:AggregatingMergeTree}
    ORDER BY (run_id, adapter, metric)""",
    """CREATE MATERIALIZED VIEW IF NOT EXISTS metrics_latest_mv {on_cluster} TO metrics_latest AS
    SELECT run_id, adapter, metric, max(s) AS step, argMaxState(v, s) AS value, max(t) AS ts
    FROM (SELECT run_id, adapter, metric, step AS s, value AS v, ts AS t FROM metrics)
    GROUP BY run_id, adapter, metric""",
    """CREATE TABLE IF NOT EXISTS evals {on_cluster} (
        run_id LowCardinality(String),
        adapter LowCardinality(String),
        step UInt64,
        suite LowCardinality(String),
        metric LowCardinality(String),
        example_id String,
        score Float64,
        prompt String,
        output String,
        reference String,
        ts DateTime64(6, 'UTC')
    ) ENGINE = {engine:ReplacingMergeTree}
    ORDER BY (run_id, adapter, suite, metric, step, example_id)
    SETTINGS {dedup}""",
)

# The exact schema of the OpenTelemetry Collector's ClickHouse exporter, so a real collector
# and Grafana's ClickHouse plugin (OTel mode) work against these tables unchanged.
OTEL_TRACES = (
    """CREATE TABLE IF NOT EXISTS otel_traces {on_cluster} (
        Timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
        TraceId String CODEC(ZSTD(1)),
        SpanId String CODEC(ZSTD(1)),
        ParentSpanId String CODEC(ZSTD(1)),
        TraceState String CODEC(ZSTD(1)),
        SpanName LowCardinality(String) CODEC(ZSTD(1)),
        SpanKind LowCardinality(String) CODEC(ZSTD(1)),
        ServiceName LowCardinality(String) CODEC(ZSTD(1)),
        ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
        ScopeName String CODEC(ZSTD(1)),
        ScopeVersion String CODEC(ZSTD(1)),
        SpanAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
        Duration UInt64 CODEC(ZSTD(1)),
        StatusCode LowCardinality(String) CODEC(ZSTD(1)),
        StatusMessage String CODEC(ZSTD(1)),
        Events Nested (
            Timestamp DateTime64(9),
            Name LowCardinality(String),
            Attributes Map(LowCardinality(String), String)
        ) CODEC(ZSTD(1)),
        Links Nested (
            TraceId String,
            SpanId String,
            TraceState String,
            Attributes Map(LowCardinality(String), String)
        ) CODEC(ZSTD(1)),
        INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
        INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
        INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
        INDEX idx_span_attr_key mapKeys(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
        INDEX idx_span_attr_value mapValues(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
        INDEX idx_duration Duration TYPE minmax GRANULARITY 1
    ) ENGINE = {engine:MergeTree}
    PARTITION BY toDate(Timestamp)
    ORDER BY (ServiceName, SpanName, toDateTime(Timestamp))
    SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, {dedup}""",
    """CREATE TABLE IF NOT EXISTS otel_traces_trace_id_ts {on_cluster} (
        TraceId String CODEC(ZSTD(1)),
        Start DateTime CODEC(Delta, ZSTD(1)),
        End DateTime CODEC(Delta, ZSTD(1)),
        INDEX idx_trace_id TraceId TYPE bloom_filter(0.01) GRANULARITY 1
    ) ENGINE = {engine:MergeTree}
    PARTITION BY toDate(Start)
    ORDER BY (TraceId, Start)
    SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1""",
    """CREATE MATERIALIZED VIEW IF NOT EXISTS otel_traces_trace_id_ts_mv {on_cluster}
    TO otel_traces_trace_id_ts AS
    SELECT TraceId, min(Timestamp) AS Start, max(Timestamp) AS End
    FROM otel_traces WHERE TraceId != '' GROUP BY TraceId""",
)

# Registry: immutable versions and an append-only log of alias moves. ClickHouse has no row
# locks, so a slot (family+version, or family+alias+seq) is claimed by inserting with the
# slot as insert_deduplication_token: the engine keeps the first block and silently drops
# any later one, and re-reading the slot tells each writer whether it won.
REGISTRY_TABLES = (
    """CREATE TABLE IF NOT EXISTS registry_versions {on_cluster} (
        family LowCardinality(String),
        version UInt32,
        claim_id UUID,
        content_sha256 String,
        artifact_path String,
        run_id String,
        adapter String,
        base_model String,
        base_model_sha256 String,
        dataset_hashes Map(String, String),
        config String,
        code_revision String,
        eval_step UInt64,
        eval_summary String,
        created_by String,
        created_at DateTime64(6, 'UTC')
    ) ENGINE = {engine:MergeTree}
    ORDER BY (family, version)
    SETTINGS {dedup}""",
    """CREATE TABLE IF NOT EXISTS registry_alias_events {on_cluster} (
        family LowCardinality(String),
        alias LowCardinality(String),
        seq UInt64,
        event_id UUID,
        action LowCardinality(String),
        from_version Nullable(UInt32),
        to_version UInt32,
        actor String,
        reason String,
        gate_verdict LowCardinality(String),
        gate_report String,
        ts DateTime64(6, 'UTC')
    ) ENGINE = {engine:MergeTree}
    ORDER BY (family, alias, seq)
    SETTINGS {dedup}""",
    # Losing attempts are kept too, so the audit shows every try, not only the winners.
    """CREATE TABLE IF NOT EXISTS registry_conflicts {on_cluster} (
        family LowCardinality(String),
        alias LowCardinality(String),
        seq UInt64,
        event_id UUID,
        actor String,
        to_version UInt32,
        ts DateTime64(6, 'UTC')
    ) ENGINE = {engine:MergeTree}
    ORDER BY (family, alias, seq)""",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "core tables: runs, adapters, metrics, evals", CORE_TABLES),
    Migration(2, "otel_traces as the OpenTelemetry Collector creates it", OTEL_TRACES),
    Migration(3, "registry: versions, alias events, conflicts", REGISTRY_TABLES),
    # Per-file sha256 so a checksum mismatch names the file that changed.
    Migration(
        4,
        "registry: per-file checksums of each version",
        (
            "ALTER TABLE registry_versions {on_cluster} "
            "ADD COLUMN IF NOT EXISTS files Map(String, String) AFTER content_sha256",
        ),
    ),
)

_ENGINE = re.compile(r"\{engine:([A-Za-z]+)(\([^)]*\))?\}")


def render(statement: str, cluster: str | None = None) -> str:
    """Render one DDL template for a single server (cluster=None) or a named cluster."""

    def engine(match: re.Match) -> str:
        name, args = match.group(1), match.group(2) or ""
        return f"Replicated{name}{args}" if cluster else f"{name}{args}"

    on_cluster = f"ON CLUSTER {check_identifier(cluster, 'cluster name')}" if cluster else ""
    dedup = "replicated_deduplication_window = 10000" if cluster else DEDUP
    text = _ENGINE.sub(engine, statement)
    return text.replace("{on_cluster}", on_cluster).replace("{dedup}", dedup)


def _create_migrations_table(store: Store, cluster: str | None) -> None:
    ddl = f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} {{on_cluster}} (
        version UInt32, name String, applied_at DateTime64(6, 'UTC')
    ) ENGINE = {{engine:ReplacingMergeTree}} ORDER BY version"""
    store.command(render(ddl, cluster))


def applied_versions(store: Store) -> set[int]:
    rows = store.query(f"SELECT DISTINCT version FROM {MIGRATIONS_TABLE}").result_rows  # noqa: S608
    return {int(r[0]) for r in rows}


def migrate(store: Store, cluster: str | None = None) -> list[Migration]:
    """Apply every pending migration; returns the ones applied. Safe to run again."""
    cluster = cluster if cluster is not None else os.environ.get(CLUSTER_ENV) or None
    applied: list[Migration] = []
    with store.session():
        _create_migrations_table(store, cluster)
        done = applied_versions(store)
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            for statement in migration.statements:
                store.command(render(statement, cluster))
            store.insert(
                MIGRATIONS_TABLE,
                [[migration.version, migration.name, _now()]],
                ["version", "name", "applied_at"],
            )
            applied.append(migration)
    return applied


def ensure_schema(store: Store) -> None:
    """Apply migrations on first use; a store already at the latest version costs one query."""
    latest = MIGRATIONS[-1].version
    with store.session():
        try:
            if latest in applied_versions(store):
                return
        except Exception:  # noqa: BLE001 - an empty store has no migrations table yet
            pass
        migrate(store)


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)
