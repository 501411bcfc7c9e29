"""Evaluation results: per-example scores and outputs, summaries, and pair-by-pair joins."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from lorafleet.store.engine import Store

EVAL_COLUMNS = (
    "run_id", "adapter", "step", "suite", "metric", "example_id",
    "score", "prompt", "output", "reference", "ts",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class EvalRow:
    run_id: str
    adapter: str
    step: int
    suite: str
    metric: str
    example_id: str
    score: float
    prompt: str = ""
    output: str = ""
    reference: str = ""
    ts: datetime | None = None


def write_evals(store: Store, rows: Sequence[EvalRow], *, dedup_token: str | None = None) -> None:
    if not rows:
        return
    now = datetime.now(UTC)
    data = [[getattr(r, c) if c != "ts" else (r.ts or now) for c in EVAL_COLUMNS] for r in rows]
    store.insert("evals", data, EVAL_COLUMNS, dedup_token=dedup_token)


def eval_summary(store: Store, run_id: str, adapter: str, step: int | None = None) -> list[dict]:
    """Mean score per (suite, metric) at `step` (default: the adapter's latest eval step)."""
    return store.query_rows(
        """
        WITH last AS (
            SELECT max(step) FROM evals WHERE run_id = {run:String} AND adapter = {adapter:String}
        )
        SELECT suite, metric, step, avg(score) AS mean, count() AS examples
        FROM evals FINAL
        WHERE run_id = {run:String} AND adapter = {adapter:String}
          AND step = if({step:Int64} < 0, (SELECT * FROM last), toUInt64({step:Int64}))
        GROUP BY suite, metric, step
        ORDER BY suite, metric
        """,
        {"run": run_id, "adapter": adapter, "step": -1 if step is None else step},
    )


def latest_eval_step(store: Store, run_id: str, adapter: str) -> int | None:
    rows = store.query(
        "SELECT max(step), count() FROM evals WHERE run_id = {run:String} AND adapter = {adapter:String}",
        {"run": run_id, "adapter": adapter},
    ).result_rows
    return int(rows[0][0]) if rows and rows[0][1] else None


def paired_examples(
    store: Store,
    a: tuple[str, str, int],
    b: tuple[str, str, int],
    suites: Sequence[str] | None = None,
) -> list[dict]:
    """Join two evaluated adapters (run_id, adapter, step) example by example.

    Only examples both sides scored on the same suite and metric are returned, so deltas are
    paired. Columns: suite, metric, example_id, prompt, reference, score_a, score_b, output_a, output_b.
    """
    return store.query_rows(
        """
        SELECT a.suite AS suite, a.metric AS metric, a.example_id AS example_id,
               a.prompt AS prompt, a.reference AS reference,
               a.score AS score_a, b.score AS score_b, a.output AS output_a, b.output AS output_b
        FROM (
            SELECT * FROM evals FINAL
            WHERE run_id = {run_a:String} AND adapter = {adapter_a:String} AND step = {step_a:UInt64}
        ) AS a
        INNER JOIN (
            SELECT * FROM evals FINAL
            WHERE run_id = {run_b:String} AND adapter = {adapter_b:String} AND step = {step_b:UInt64}
        ) AS b
        ON a.suite = b.suite AND a.metric = b.metric AND a.example_id = b.example_id
        WHERE empty({suites:Array(String)}) OR a.suite IN {suites:Array(String)}
        ORDER BY suite, metric, example_id
        """,
        {
            "run_a": a[0], "adapter_a": a[1], "step_a": a[2],
            "run_b": b[0], "adapter_b": b[1], "step_b": b[2],
            "suites": list(suites or []),
        },
    )  # fmt: skip
