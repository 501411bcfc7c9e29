"""`lorafleet register|families|versions|compare|promote|rollback|history|resolve`: the adapter registry."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from lorafleet.errors import GateRefused
from lorafleet.store import open_store
from lorafleet.store import registry as reg
from lorafleet.ui.cli._common import JsonOption, StoreOption, cell, console, handle_errors, print_json

ActorOption = Annotated[
    str | None, typer.Option("--actor", help="Who is acting, for the audit trail (default: the OS user).")
]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why: recorded with the event.")]
AliasOption = Annotated[str, typer.Option("--alias", "-a", help="Alias to move, e.g. production.")]
ToleranceOption = Annotated[
    float, typer.Option("--tolerance", help="Allowed drop per metric, in the metric's units, before the gate refuses.")
]
MetricOption = Annotated[
    list[str] | None, typer.Option("--metric", help="Gating metric (repeatable; default: every metric).")
]

VERSION_COLUMNS = ("version", "aliases", "run_id", "adapter", "content_sha256", "eval", "created_by", "created_at")
EVENT_COLUMNS = ("ts", "alias", "seq", "action", "from", "to", "actor", "reason", "gate")


def register(app: typer.Typer) -> None:
    for name, command in (
        ("register", register_cmd),
        ("families", families_cmd),
        ("versions", versions_cmd),
        ("compare", compare_cmd),
        ("promote", promote_cmd),
        ("rollback", rollback_cmd),
        ("history", history_cmd),
        ("resolve", resolve_cmd),
    ):
        app.command(name)(handle_errors(command))


def register_cmd(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    adapter: Annotated[str | None, typer.Argument(help="Adapter; omit to register every finished adapter.")] = None,
    actor: ActorOption = None,
    store: StoreOption = None,
    json: JsonOption = False,
) -> None:
    """Register an adapter's latest artifact as the next version of its family (same content: same version)."""
    handle = open_store(store)
    if adapter is None:
        versions = reg.register_run(handle, run_id, actor=actor)
    else:
        versions = [reg.register_version(handle, run_id, adapter, actor=actor)]
    if json:
        print_json([v.to_dict() for v in versions])
        return
    rows = [{"family": v.family, "version": v.version, "adapter": v.adapter, "sha256": v.content_sha256[:12],
             "artifact": v.artifact_path} for v in versions]  # fmt: skip
    _table(rows, ("family", "version", "adapter", "sha256", "artifact"), f"registered from run {run_id}")


def families_cmd(store: StoreOption = None, json: JsonOption = False) -> None:
    """List families: versions, latest, and where each alias points now."""
    rows = reg.list_families(open_store(store))
    if json:
        print_json(rows)
        return
    for row in rows:
        row["aliases"] = _aliases_text(row["aliases"])
    _table(rows, ("family", "versions", "latest", "aliases", "updated"), "families")


def versions_cmd(
    family: Annotated[str, typer.Argument(help="Family.")], store: StoreOption = None, json: JsonOption = False
) -> None:
    """List a family's versions with lineage and the aliases on each."""
    handle = open_store(store)
    with handle.session():
        versions = reg.list_versions(handle, family)
        heads = reg.aliases(handle, family)
    if json:
        print_json([v.to_dict() | {"aliases": sorted(a for a, n in heads.items() if n == v.version)} for v in versions])
        return
    rows = [
        {
            "version": v.version,
            "aliases": ", ".join(sorted(a for a, n in heads.items() if n == v.version)),
            "run_id": v.run_id,
            "adapter": v.adapter,
            "content_sha256": v.content_sha256[:12],
            "eval": "; ".join(f"{s['suite']}/{s['metric']}={s['mean']:.4g}" for s in v.eval_summary),
            "created_by": v.created_by,
            "created_at": v.created_at,
        }
        for v in versions
    ]
    _table(rows, VERSION_COLUMNS, f"versions of {family}")


def compare_cmd(
    family: Annotated[str, typer.Argument(help="Family.")],
    baseline: Annotated[str, typer.Argument(help="Baseline version (e.g. 3 or v3).")],
    candidate: Annotated[str, typer.Argument(help="Candidate version.")],
    tolerance: ToleranceOption = 0.0,
    metric: MetricOption = None,
    store: StoreOption = None,
    json: JsonOption = False,
) -> None:
    """The gate's table: candidate minus baseline per metric, pair by pair, with 95% bootstrap intervals."""
    report = reg.compare(
        open_store(store),
        family,
        reg.parse_version(baseline),
        reg.parse_version(candidate),
        tolerance=tolerance,
        gating=metric or None,
    )
    if json:
        print_json(report.to_dict())
    else:
        print_gate(report)


def promote_cmd(
    family: Annotated[str, typer.Argument(help="Family.")],
    version: Annotated[str, typer.Argument(help="Version to promote (e.g. 3 or v3).")],
    alias: AliasOption,
    reason: ReasonOption = "",
    force: Annotated[bool, typer.Option("--force", help="Override a refusing gate (needs --reason).")] = False,
    tolerance: ToleranceOption = 0.0,
    metric: MetricOption = None,
    actor: ActorOption = None,
    store: StoreOption = None,
    json: JsonOption = False,
) -> None:
    """Move an alias to a version if the gate passes against the alias's current version."""
    handle = open_store(store)
    try:
        event = reg.promote(
            handle, family, reg.parse_version(version), alias,
            reason=reason, force=force, actor=actor, tolerance=tolerance, gating=metric or None,
        )  # fmt: skip
    except GateRefused as refused:
        if json:
            print_json({"refused": True, "message": str(refused), "report": refused.report.to_dict()})
        else:
            print_gate(refused.report)
        raise
    if json:
        print_json(event.to_dict())
        return
    if event.gate_report:
        print_gate(
            reg.GateReport(**event.gate_report | {"rows": [reg.MetricDelta(**r) for r in event.gate_report["rows"]]})
        )
    console.print(f"{family}@{alias} -> version {event.to_version} (was {_version_text(event.from_version)}, "
                  f"gate: {event.gate_verdict}, seq {event.seq})")  # fmt: skip


def rollback_cmd(
    family: Annotated[str, typer.Argument(help="Family.")],
    alias: AliasOption,
    to: Annotated[str | None, typer.Option("--to", help="Version to move to (default: the one held before).")] = None,
    reason: ReasonOption = "",
    actor: ActorOption = None,
    store: StoreOption = None,
    json: JsonOption = False,
) -> None:
    """Move an alias back to the version it held before (repeat to walk further back), or --to a version."""
    target = reg.parse_version(to) if to is not None else None
    event = reg.rollback(open_store(store), family, alias, to=target, reason=reason, actor=actor)
    if json:
        print_json(event.to_dict())
        return
    console.print(f"{family}@{alias} -> version {event.to_version} (rolled back from version {event.from_version})")


def history_cmd(
    family: Annotated[str, typer.Argument(help="Family.")],
    alias: Annotated[str | None, typer.Option("--alias", "-a", help="Only this alias.")] = None,
    at: Annotated[str | None, typer.Option("--at", help="ISO-8601 time (naive = UTC): history up to then.")] = None,
    store: StoreOption = None,
    json: JsonOption = False,
) -> None:
    """Every alias move (time, actor, from -> to, reason, gate), and what each alias pointed at (--at: then)."""
    moment = reg.parse_at(at) if at is not None else None
    handle = open_store(store)
    with handle.session():
        events = reg.history(handle, family, alias, moment)
        pointing = reg.aliases(handle, family, moment)
        lost = reg.conflicts(handle, family, alias)
    if alias is not None:
        pointing = {alias: pointing.get(alias)}
    if json:
        print_json({"family": family, "at": moment, "aliases": pointing,
                    "events": [e.to_dict() for e in events], "conflicts": lost})  # fmt: skip
        return
    rows = [
        {"ts": e.ts, "alias": e.alias, "seq": e.seq, "action": e.action, "from": _version_text(e.from_version),
         "to": e.to_version, "actor": e.actor, "reason": e.reason, "gate": e.gate_verdict}
        for e in events
    ]  # fmt: skip
    _table(rows, EVENT_COLUMNS, f"history of {family}" + (f" up to {moment.isoformat()}" if moment else ""))
    when = f"at {moment.isoformat()}" if moment else "now"
    console.print(f"{family} {when}: {_aliases_text(pointing) or 'no aliases set'}")
    if lost:
        console.print(f"{len(lost)} conflicting move(s) lost a race and were not applied (see --json)")


def resolve_cmd(
    ref: Annotated[str, typer.Argument(help="FAMILY@ALIAS or FAMILY:VERSION.")],
    store: StoreOption = None,
    json: JsonOption = False,
) -> None:
    """Print the artifact path of a version after checking its sha256 (refuses on any mismatch)."""
    handle = open_store(store)
    version = reg.lookup(handle, ref)
    path = reg.verify(version)
    if json:
        print_json({"ref": ref, "family": version.family, "version": version.version, "path": str(path),
                    "content_sha256": version.content_sha256})  # fmt: skip
    else:
        typer.echo(str(path))


def print_gate(report: reg.GateReport) -> None:
    """The gate as a table: one row per (suite, metric); delta > 0 is better (lower-is-better metrics are flipped)."""
    first = report.baseline is None
    rows = []
    for r in report.rows:
        row = {"suite": r.suite, "metric": r.metric + ("" if r.higher_is_better else " ↓"),
               "n": r.n, "candidate": r.candidate_mean}  # fmt: skip
        if not first:
            result = "[bold red]REGRESSION[/]" if r.regression else ("ok" if r.gating else "not gating")
            row |= {"baseline": r.baseline_mean, "delta": f"{r.delta:+.4g}",
                    "95% CI": f"[{r.ci_low:+.4g}, {r.ci_high:+.4g}]", "result": result}  # fmt: skip
        rows.append(row)
    if first:
        title = f"{report.family}:{report.candidate}: first promotion, the candidate's own evals"
        columns = ("suite", "metric", "n", "candidate")
    else:
        title = (f"gate {report.family}:{report.candidate} vs {report.baseline}: {report.verdict} "
                 f"(delta > 0 is better, ↓ lower is better; tolerance {report.tolerance:g})")  # fmt: skip
        columns = ("suite", "metric", "n", "baseline", "candidate", "delta", "95% CI", "result")
    if not rows:
        title += " - no paired eval examples"
    _table(rows, columns, title)


def _table(rows: list[dict], columns: tuple[str, ...], title: str) -> None:
    """Like _common.output, but cells fold instead of being cut, so narrow terminals lose nothing."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(cell(row.get(c)) for c in columns))
    console.print(table)


def _version_text(version: int | None) -> str:
    return "-" if version is None else str(version)


def _aliases_text(aliases: dict[str, int | None]) -> str:
    return ", ".join(f"{a}={_version_text(v)}" for a, v in sorted(aliases.items()))
