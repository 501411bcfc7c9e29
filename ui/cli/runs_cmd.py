"""`lorafleet runs` and `lorafleet adapters`: what trained, and where each adapter stands."""

from __future__ import annotations

from typing import Annotated

import typer

from lorafleet.store import metrics, open_store, runs
from lorafleet.ui.cli._common import JsonOption, StoreOption, handle_errors, output

RUN_COLUMNS = ("run_id", "status", "base_model", "adapters", "started_at", "finished_at")
ADAPTER_COLUMNS = ("run_id", "adapter", "family", "status", "step", "loss", "grad_norm", "status_reason")


@handle_errors
def list_runs_cmd(
    limit: Annotated[int, typer.Option(help="Most recent runs to show.")] = 50,
    store: StoreOption = None,
    json: JsonOption = False,
) -> None:
    """List training runs, newest first."""
    output(runs.list_runs(open_store(store), limit=limit), json, RUN_COLUMNS, title="runs")


@handle_errors
def list_adapters_cmd(
    run: Annotated[list[str] | None, typer.Argument(help="Run ids (default: all runs).")] = None,
    family: Annotated[str | None, typer.Option(help="Only this family.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status, e.g. running or quarantined.")] = None,
    store: StoreOption = None,
    json: JsonOption = False,
) -> None:
    """List adapters with their status and latest loss and gradient norm."""
    handle = open_store(store)
    with handle.session():
        if run:
            for run_id in run:
                runs.get_run(handle, run_id)  # NotFound names an unknown run
        rows = runs.list_adapters(handle, run, family=family, status=status)
        latest = metrics.fleet_latest(handle, run, ["loss", "grad_norm"])
    values = {(r["run_id"], r["adapter"], r["metric"]): r["value"] for r in latest}
    for row in rows:
        row["loss"] = values.get((row["run_id"], row["adapter"], "loss"))
        row["grad_norm"] = values.get((row["run_id"], row["adapter"], "grad_norm"))
    output(rows, json, ADAPTER_COLUMNS, title="adapters")


def register(root: typer.Typer) -> None:
    root.command("runs")(list_runs_cmd)
    root.command("adapters")(list_adapters_cmd)
