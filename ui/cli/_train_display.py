"""The live fleet table of `lorafleet train`: a TrainerCallback that renders one row per adapter."""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from lorafleet.trainer import EvalRecord, FleetChange, RunEnd, RunRecord, StepRecord, TrainerCallback

STATUS_STYLE = {"active": "green", "finished": "bold green", "quarantined": "bold red", "stopped": "yellow",
                "early_stopped": "yellow", "failed": "red"}  # fmt: skip


_SHORT = {"eval_loss": "loss", "exact_match": "em", "char_accuracy": "char"}


class FleetDisplay(TrainerCallback):
    def __init__(self, console: Console | None = None, refresh_s: float = 0.25):
        self.console = console or Console()
        self.rows: dict[str, dict] = {}
        self.title = "fleet"
        self.refresh_s, self._last = refresh_s, 0.0
        self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> FleetDisplay:
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.update(self._table())
        self.live.__exit__(*exc)

    def _row(self, name: str, family: str = "", total: int = 0) -> dict:
        return self.rows.setdefault(name, {"family": family, "step": 0, "total": total, "loss": None, "eval": "",
                                           "status": "active"})  # fmt: skip

    def on_run_start(self, run: RunRecord) -> None:
        self.title = f"run {run.run_id}" + (
            f" (resumed at step {run.resumed_from_step})" if run.resumed_from_step else ""
        )
        for info in run.adapters:
            self._row(info.name, info.family, info.config.get("max_steps") or 0)
        self._refresh(force=True)

    def on_step(self, record: StepRecord) -> None:
        for a in record.adapters:
            row = self._row(a.adapter)
            row.update(step=a.step, loss=a.loss, grad_norm=a.grad_norm, lr=a.learning_rate)
        self._refresh()

    def on_eval(self, record: EvalRecord) -> None:
        """Show where the adapter started and where it is now: the learning is the point of the demo."""
        row = self._row(record.adapter)
        first = row.setdefault("first_eval", record.metrics)
        parts = [f"{_SHORT.get(k, k)} {first.get(k, v):.2f}→{v:.2f}" for k, v in record.metrics.items()
                 if k != "perplexity"]  # fmt: skip
        row["eval"] = f"@{record.step} " + " ".join(parts)
        self._refresh()

    def on_fleet_change(self, change: FleetChange) -> None:
        row = self._row(change.adapter, change.adapter_info.family if change.adapter_info else "")
        if change.adapter_info:
            row["total"] = change.adapter_info.config.get("max_steps") or 0
        row["status"] = {"join": "active", "leave": "stopped", "early_stop": "early_stopped", "finish": "finished"}.get(
            change.kind, change.kind + "d" if change.kind == "quarantine" else change.kind
        )
        if change.kind == "quarantine":
            row["status"] = f"quarantined ({change.reason}: {change.value})"
        elif change.kind == "rejected":
            row["status"] = f"rejected ({change.reason})"
        self._refresh(force=True)

    def on_run_end(self, end: RunEnd) -> None:
        self.title += f" - {end.status} after {end.step} steps"
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.refresh_s:
            self._last = now
            self.live.update(self._table())

    def _table(self) -> Table:
        table = Table(title=self.title)
        for column in ("adapter", "family", "step", "loss", "grad norm", "lr", "eval", "status"):
            table.add_column(column, justify="right" if column in ("step", "loss", "grad norm", "lr") else "left")
        for name, r in self.rows.items():
            style = STATUS_STYLE.get(r["status"].split(" ")[0], "")
            table.add_row(
                name,
                r["family"],
                f"{r['step']}/{r['total']}" if r["total"] else str(r["step"]),
                _num(r.get("loss")),
                _num(r.get("grad_norm")),
                _num(r.get("lr")),
                r["eval"],
                f"[{style}]{r['status']}[/]" if style else r["status"],
            )
        return table


def _num(value) -> str:
    return "" if value is None else f"{value:.4g}"
