"""`lorafleet store info|migrate`."""

from __future__ import annotations

import typer

from lorafleet.store import MIGRATIONS, migrate, open_store
from lorafleet.store.migrations import applied_versions
from lorafleet.ui.cli._common import JsonOption, StoreOption, handle_errors, output

app = typer.Typer(help="Inspect and migrate the ClickHouse store.", no_args_is_help=True)

TABLES = ("runs", "adapters", "metrics", "evals", "otel_traces", "registry_versions", "registry_alias_events")


@app.command("info")
@handle_errors
def info(store: StoreOption = None, json: JsonOption = False) -> None:
    """Show the store URL (password masked), engine, version and row counts per table."""
    handle = open_store(store)
    with handle.session():
        counts = {t: int(handle.query(f"SELECT count() FROM {t}").result_rows[0][0]) for t in TABLES}  # noqa: S608
        data = {
            "url": handle.url.masked(),
            "engine": "chdb (embedded)" if handle.url.embedded else "clickhouse-server",
            "version": handle.engine_version(),
            "schema_version": max(applied_versions(handle)),
            "rows": counts,
        }
    if json:
        output(data, True)
        return
    output({k: v for k, v in data.items() if k != "rows"}, False, title="store")
    output([{"table": t, "rows": n} for t, n in counts.items()], False, title="rows")


@app.command("migrate")
@handle_errors
def migrate_cmd(
    store: StoreOption = None,
    cluster: str = typer.Option(None, help="Render ON CLUSTER and Replicated engines for this cluster."),
    json: JsonOption = False,
) -> None:
    """Apply pending schema migrations (idempotent)."""
    handle = open_store(store, migrate=False)
    applied = migrate(handle, cluster=cluster)
    rows = [{"version": m.version, "name": m.name} for m in applied]
    if json:
        output({"applied": rows, "latest": MIGRATIONS[-1].version}, True)
    elif rows:
        output(rows, False, title="applied migrations")
    else:
        typer.echo(f"store is up to date (schema version {MIGRATIONS[-1].version})")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="store")
