"""Runs and the adapters in them: one row per run, one per adapter per run (latest state wins)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from lorafleet.errors import NotFound
from lorafleet.store.engine import Store

RUN_COLUMNS = (
    "run_id", "name", "status", "base_model", "base_model_sha256", "spec",
    "host", "pid", "code_revision", "started_at", "finished_at", "updated_at",
)  # fmt: skip
ADAPTER_COLUMNS = (
    "run_id", "adapter", "family", "status", "status_reason", "config",
    "dataset_sha256", "step", "artifact_path", "updated_at",
)  # fmt: skip


@dataclass
class RunRow:
    run_id: str
    name: str = ""
    status: str = "running"
    base_model: str = ""
    base_model_sha256: str = ""
    spec: dict = field(default_factory=dict)
    host: str = ""
    pid: int = 0
    code_revision: str = ""
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None


@dataclass
class AdapterRow:
    run_id: str
    adapter: str
    family: str = ""
    status: str = "pending"
    status_reason: str = ""
    config: dict = field(default_factory=dict)
    dataset_sha256: str = ""
    step: int = 0
    artifact_path: str = ""


def upsert_run(store: Store, run: RunRow, *, updated_at: datetime | None = None) -> None:
    """`updated_at` (the row's version) defaults to now; writers that may replay pass the event time."""
    row = asdict(run)
    row["spec"] = json.dumps(run.spec, sort_keys=True, default=str)
    row["updated_at"] = updated_at or datetime.now(UTC)
    store.insert("runs", [[row[c] for c in RUN_COLUMNS]], RUN_COLUMNS)


def upsert_adapters(
    store: Store, adapters: Sequence[AdapterRow], *, updated_at: datetime | Sequence[datetime] | None = None
) -> None:
    """`updated_at`: one version for all rows (default now) or one per row, for replayable writers."""
    if not adapters:
        return
    versions = updated_at if isinstance(updated_at, Sequence) else [updated_at or datetime.now(UTC)] * len(adapters)
    rows = []
    for adapter, version in zip(adapters, versions, strict=True):
        row = asdict(adapter)
        row["config"] = json.dumps(adapter.config, sort_keys=True, default=str)
        row["updated_at"] = version
        rows.append([row[c] for c in ADAPTER_COLUMNS])
    store.insert("adapters", rows, ADAPTER_COLUMNS)


def list_runs(store: Store, limit: int = 100) -> list[dict]:
    rows = store.query_rows(
        """
        SELECT run_id, name, status, base_model, started_at, finished_at, updated_at,
               (SELECT count() FROM adapters FINAL WHERE adapters.run_id = r.run_id) AS adapters
        FROM runs AS r FINAL
        ORDER BY started_at DESC
        LIMIT {limit:UInt32}
        """,
        {"limit": limit},
    )
    return rows


def get_run(store: Store, run_id: str) -> dict:
    rows = store.query_rows("SELECT * FROM runs FINAL WHERE run_id = {run:String}", {"run": run_id})
    if not rows:
        raise NotFound(f"unknown run {run_id!r}")
    row = rows[0]
    row["spec"] = json.loads(row["spec"] or "{}")
    return row


def list_adapters(
    store: Store,
    run_ids: Sequence[str] | None = None,
    family: str | None = None,
    status: str | None = None,
) -> list[dict]:
    rows = store.query_rows(
        """
        SELECT run_id, adapter, family, status, status_reason, config, dataset_sha256, step,
               artifact_path, updated_at
        FROM adapters FINAL
        WHERE (empty({runs:Array(String)}) OR run_id IN {runs:Array(String)})
          AND ({family:String} = '' OR family = {family:String})
          AND ({status:String} = '' OR status = {status:String})
        ORDER BY run_id, adapter
        """,
        {"runs": list(run_ids or []), "family": family or "", "status": status or ""},
    )
    for row in rows:
        row["config"] = json.loads(row["config"] or "{}")
    return rows


def adapter_keys(store: Store, run_ids: Sequence[str]) -> list[tuple[str, str]]:
    """(run_id, adapter) of every adapter of the runs, in order: the cheap listing for pickers."""
    rows = store.query_rows(
        "SELECT DISTINCT run_id, adapter FROM adapters WHERE run_id IN {runs:Array(String)} ORDER BY run_id, adapter",
        {"runs": list(run_ids)},
    )
    return [(r["run_id"], r["adapter"]) for r in rows]


def get_adapter(store: Store, run_id: str, adapter: str) -> dict:
    rows = list_adapters(store, [run_id])
    for row in rows:
        if row["adapter"] == adapter:
            return row
    raise NotFound(f"unknown adapter {adapter!r} in run {run_id!r}")
