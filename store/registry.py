"""The adapter registry: immutable versions per family, and aliases moved by append-only events.

ClickHouse has no row locks, so every write claims a *slot* by inserting with the slot's key
as `insert_deduplication_token` (the tables keep a deduplication window): the engine keeps the
first block for a token and silently drops later ones. The writer re-reads the slot; if the
row there carries its own claim id, it won.

    version/<family>/<n>             the n-th version of a family; a loser retries with n+1
    alias/<family>/<alias>/<seq>     the seq-th move of an alias; a loser gets Conflict (exit 3)

A move gates against the alias's head at seq n and claims seq n+1, a compare-and-set: of two
writers that read the same head, exactly one lands. Readers take the row at the highest seq.
Should a slot ever hold two rows (a writer older than the dedup window), every reader picks
the same one: the earliest (ts, id). Losing alias moves are kept in `registry_conflicts`.

A promote is two steps, `plan_promote` (read the head, verify the artifact, run the gate) and
`apply_move` (claim the next seq), so a UI can show the gate and apply it after confirmation;
the alias must not have moved in between. `promote` does both at once.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from lorafleet.errors import BadInput, Conflict, GateRefused, IntegrityError, NotFound, Refused
from lorafleet.names import check_name
from lorafleet.store import evals, runs
from lorafleet.store.engine import Store

VERSIONS = "registry_versions"
EVENTS = "registry_alias_events"
CONFLICTS = "registry_conflicts"

VERSION_COLUMNS = (
    "family", "version", "claim_id", "content_sha256", "files", "artifact_path", "run_id", "adapter",
    "base_model", "base_model_sha256", "dataset_hashes", "config", "code_revision", "eval_step",
    "eval_summary", "created_by", "created_at",
)  # fmt: skip
EVENT_COLUMNS = (
    "family", "alias", "seq", "event_id", "action", "from_version", "to_version", "actor", "reason",
    "gate_verdict", "gate_report", "ts",
)  # fmt: skip
CONFLICT_COLUMNS = ("family", "alias", "seq", "event_id", "actor", "to_version", "ts")

REGISTERABLE = ("finished", "early_stopped")  # adapter statuses register_run picks up
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
LOWER_IS_BETTER = frozenset({"eval_loss", "loss", "perplexity", "ppl", "nll", "cross_entropy", "error_rate"})
MAX_VERSION_CLAIMS = 100

# Alias actions: a walk-back `rollback` pops the alias's stack; the others push a version.
PROMOTE, ROLLBACK, ROLLBACK_TO = "promote", "rollback", "rollback_to"


# -- records -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Version:
    family: str
    version: int
    content_sha256: str
    files: dict[str, str]  # relative path -> sha256 of its bytes
    artifact_path: str
    run_id: str
    adapter: str
    base_model: str
    base_model_sha256: str
    dataset_hashes: dict[str, str]
    config: dict
    code_revision: str
    eval_step: int | None  # the step whose evals the gate pairs; None when never evaluated
    eval_summary: list[dict]  # suite, metric, step, mean, examples
    created_by: str
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.family}:{self.version}"

    def to_dict(self) -> dict:
        return asdict(self) | {"ref": self.ref}


@dataclass(frozen=True)
class AliasEvent:
    family: str
    alias: str
    seq: int
    event_id: str
    action: str  # promote | rollback | rollback_to
    from_version: int | None
    to_version: int
    actor: str
    reason: str
    gate_verdict: str  # pass | first | forced-regression | forced-no-evidence | not-gated
    gate_report: dict  # GateReport.to_dict(), or {} when not gated
    ts: datetime

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MetricDelta:
    """One (suite, metric) of the gate. delta > 0 means the candidate is better, whatever the
    metric's direction; the interval is a paired bootstrap over the same examples."""

    suite: str
    metric: str
    n: int
    baseline_mean: float | None
    candidate_mean: float
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    higher_is_better: bool
    gating: bool
    regression: bool


@dataclass(frozen=True)
class GateReport:
    family: str
    baseline: int | None  # None: first promotion, the rows show the candidate's own evals
    candidate: int
    tolerance: float
    confidence: float
    resamples: int
    rows: tuple[MetricDelta, ...]
    verdict: str  # pass | regression | first | no-evidence

    @property
    def regressions(self) -> list[MetricDelta]:
        return [r for r in self.rows if r.regression]

    @property
    def passed(self) -> bool:
        return self.verdict in ("pass", "first")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["rows"] = [asdict(r) for r in self.rows]
        return data


@dataclass(frozen=True)
class MovePlan:
    """A checked alias move waiting to be applied: it lands only if the alias is still at expect_seq."""

    family: str
    alias: str
    action: str
    to_version: int
    from_version: int | None
    expect_seq: int  # the head's seq when planned; 0 for an alias that never existed
    actor: str
    reason: str
    gate_verdict: str
    report: GateReport | None = field(default=None)


# -- artifacts -----------------------------------------------------------------------------
def hash_files(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory`, keyed by its relative POSIX path."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        files[path.relative_to(directory).as_posix()] = digest.hexdigest()
    return files


def content_hash(files: dict[str, str]) -> str:
    """One sha256 over names and bytes: the files sorted by relative path, each as `path NUL sha256 LF`."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]}\n".encode())
    return digest.hexdigest()


def verify(version: Version) -> Path:
    """Re-hash the artifact; IntegrityError naming the first file that differs."""
    root = Path(version.artifact_path)
    if not root.is_dir():
        raise IntegrityError(f"{version.ref}: artifact directory {root} is missing")
    found = hash_files(root)
    for name, expected in sorted(version.files.items()):
        if name not in found:
            raise IntegrityError(f"{version.ref}: file {root / name} is missing")
        if found[name] != expected:
            raise IntegrityError(
                f"{version.ref}: file {root / name} does not match its checksum "
                f"(registered sha256 {expected[:12]}…, found {found[name][:12]}…)"
            )
    extra = sorted(set(found) - set(version.files))
    if extra:
        raise IntegrityError(f"{version.ref}: unexpected file {root / extra[0]} in the artifact")
    if content_hash(found) != version.content_sha256:
        raise IntegrityError(f"{version.ref}: artifact {root} does not match its content hash")
    return root


def _artifact_dir(raw: str, run_id: str, adapter: str) -> Path:
    if not raw:
        raise BadInput(f"adapter {adapter!r} in run {run_id!r} has no saved artifact yet")
    path = Path(raw).expanduser().absolute()
    missing = [name for name in PEFT_FILES if not (path / name).is_file()]
    if missing:
        raise BadInput(f"artifact {path} of adapter {adapter!r} is not a PEFT adapter: missing {', '.join(missing)}")
    return path


# -- versions ------------------------------------------------------------------------------
def register_version(store: Store, run_id: str, adapter: str, *, actor: str | None = None) -> Version:
    """Register the adapter's latest artifact as the next version of its family.

    Registering content the family already holds returns that version instead of a duplicate,
    so registering a run twice is harmless."""
    with store.session():
        run = runs.get_run(store, run_id)
        row = runs.get_adapter(store, run_id, adapter)
        path = _artifact_dir(row["artifact_path"], run_id, adapter)
        summary = evals.eval_summary(store, run_id, adapter, _eval_step_for(store, run_id, adapter, path))
    family = check_name(row["family"] or adapter, "family")
    files = hash_files(path)
    fields = {
        "family": family,
        "content_sha256": content_hash(files),
        "files": files,
        "artifact_path": str(path),
        "run_id": run_id,
        "adapter": adapter,
        "base_model": run["base_model"],
        "base_model_sha256": run["base_model_sha256"],
        "dataset_hashes": {"train": row["dataset_sha256"]} if row["dataset_sha256"] else {},
        "config": row["config"],
        "code_revision": run["code_revision"],
        "eval_step": int(summary[0]["step"]) if summary else None,
        "eval_summary": [_summary_row(s) for s in summary],
        "created_by": actor_name(store, actor),
    }
    with store.session():
        existing = _version_with_content(store, family, fields["content_sha256"])
        return existing or _claim_version(store, fields)


def register_run(store: Store, run_id: str, *, actor: str | None = None) -> list[Version]:
    """Register every adapter of the run that finished or stopped early (the end of `train`)."""
    runs.get_run(store, run_id)
    adapters = runs.list_adapters(store, [run_id])
    return [register_version(store, run_id, a["adapter"], actor=actor) for a in adapters if a["status"] in REGISTERABLE]


def _eval_step_for(store: Store, run_id: str, adapter: str, artifact: Path) -> int | None:
    """The eval that scored these weights: the latest at or before the checkpoint's step, which the
    trainer writes into the checkpoint's lorafleet.json (None, i.e. the latest eval, for other PEFT dirs)."""
    try:
        step = int(json.loads((artifact / "lorafleet.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    rows = store.query(
        "SELECT max(step), count() FROM evals "
        "WHERE run_id = {run:String} AND adapter = {adapter:String} AND step <= {step:UInt64}",
        {"run": run_id, "adapter": adapter, "step": step},
    ).result_rows
    return int(rows[0][0]) if rows and rows[0][1] else None


def _summary_row(row: dict) -> dict:
    keys = ("suite", "metric", "step", "mean", "examples")
    return {k: (float(row[k]) if k == "mean" else row[k]) for k in keys}


def _claim_version(store: Store, fields: dict) -> Version:
    number = 0
    for _ in range(MAX_VERSION_CLAIMS):
        # Past the last number tried too: a slot whose row was deleted stays claimed, and numbers are never reused.
        number = max(number, _max_version(store, fields["family"])) + 1
        claim_id = uuid.uuid4()
        version = Version(version=number, created_at=datetime.now(UTC), **fields)
        store.insert(
            VERSIONS,
            [_version_row(version, claim_id)],
            VERSION_COLUMNS,
            dedup_token=f"version/{version.family}/{number}",
        )
        winner = store.query_rows(
            f"SELECT claim_id FROM {VERSIONS} WHERE family = {{family:String}} AND version = {{version:UInt32}} "  # noqa: S608
            "ORDER BY created_at, claim_id LIMIT 1",
            {"family": version.family, "version": number},
        )
        if winner and winner[0]["claim_id"] == claim_id:
            return version
    raise Conflict(f"could not claim a version number in family {fields['family']!r} after {MAX_VERSION_CLAIMS} tries")


def _version_row(version: Version, claim_id: uuid.UUID) -> list:
    row = asdict(version) | {"claim_id": claim_id}
    row["config"] = json.dumps(version.config, sort_keys=True, default=str)
    row["eval_summary"] = json.dumps(version.eval_summary)
    row["eval_step"] = version.eval_step or 0
    return [row[c] for c in VERSION_COLUMNS]


def _max_version(store: Store, family: str) -> int:
    rows = store.query(f"SELECT max(version) FROM {VERSIONS} WHERE family = {{family:String}}", {"family": family})  # noqa: S608
    return int(rows.result_rows[0][0] or 0)


# One row per version: should a slot ever hold two, every reader takes the earliest claim.
_VERSIONS_SQL = f"""
    SELECT * FROM {VERSIONS}
    WHERE family = {{family:String}} AND ({{version:UInt32}} = 0 OR version = {{version:UInt32}})
    ORDER BY version, created_at, claim_id
    LIMIT 1 BY version
"""  # noqa: S608


def _load_versions(store: Store, family: str, version: int = 0) -> list[Version]:
    rows = store.query_rows(_VERSIONS_SQL, {"family": family, "version": version})
    return [_version_from_row(r) for r in rows]


def _version_from_row(row: dict) -> Version:
    summary = json.loads(row["eval_summary"] or "[]")
    return Version(
        family=row["family"],
        version=int(row["version"]),
        content_sha256=row["content_sha256"],
        files=dict(row["files"]),
        artifact_path=row["artifact_path"],
        run_id=row["run_id"],
        adapter=row["adapter"],
        base_model=row["base_model"],
        base_model_sha256=row["base_model_sha256"],
        dataset_hashes=dict(row["dataset_hashes"]),
        config=json.loads(row["config"] or "{}"),
        code_revision=row["code_revision"],
        eval_step=int(row["eval_step"]) if summary else None,
        eval_summary=summary,
        created_by=row["created_by"],
        created_at=_utc(row["created_at"]),
    )


def _version_with_content(store: Store, family: str, sha256: str) -> Version | None:
    return next((v for v in _load_versions(store, family) if v.content_sha256 == sha256), None)


def list_families(store: Store) -> list[dict]:
    """Every family: version count, latest version, when it was last registered, its aliases now."""
    with store.session():
        rows = store.query_rows(
            f"SELECT family, uniqExact(version) AS versions, max(version) AS latest, max(created_at) AS updated "  # noqa: S608
            f"FROM {VERSIONS} GROUP BY family ORDER BY family"
        )
        heads = _heads(store)
    for row in rows:
        row["updated"] = _utc(row["updated"])
        row["aliases"] = {
            alias: event.to_version for (fam, alias), event in sorted(heads.items()) if fam == row["family"]
        }
    return rows


def list_versions(store: Store, family: str) -> list[Version]:
    versions = _load_versions(store, check_name(family, "family"))
    if not versions:
        raise NotFound(f"unknown family {family!r}")
    return versions


def get_version(store: Store, family: str, version: int) -> Version:
    check_name(family, "family")
    number = _check_version_number(version)
    found = _load_versions(store, family, number)
    if found:
        return found[0]
    if not _load_versions(store, family):
        raise NotFound(f"unknown family {family!r}")
    raise NotFound(f"unknown version {number} of family {family!r}")


def parse_version(text: str | int) -> int:
    """'3' or 'v3' -> 3."""
    raw = str(text).strip()
    digits = raw[1:] if raw[:1] in ("v", "V") else raw
    if not digits.isdigit():
        raise BadInput(f"invalid version {raw!r}: use a number such as 3 or v3")
    return _check_version_number(int(digits))


def _check_version_number(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**32:
        raise BadInput(f"invalid version {version!r}: versions are numbered from 1")
    return version


# -- the gate ------------------------------------------------------------------------------
def higher_is_better(metric: str) -> bool:
    return not (metric in LOWER_IS_BETTER or metric.endswith("_loss") or metric.endswith("perplexity"))


def paired_bootstrap(
    deltas: np.ndarray, *, resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean paired delta: resample examples (pairs) with replacement."""
    deltas = np.asarray(deltas, dtype=np.float64)
    n = len(deltas)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 4_000_000 // n)  # bounds memory at ~32 MB of indices per chunk
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        means[start : start + size] = deltas[rng.integers(0, n, size=(size, n))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def compare(
    store: Store,
    family: str,
    v_a: int,
    v_b: int,
    *,
    tolerance: float = 0.0,
    gating: Sequence[str] | None = None,
    suites: Sequence[str] | None = None,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> GateReport:
    """The gate's table for candidate v_b against baseline v_a, pair by pair over shared examples.

    `gating` names the metrics that can block (default: all); a regression is an interval
    wholly below -tolerance, in the metric's units, oriented so that lower means worse."""
    _check_gate_args(tolerance, resamples, confidence)
    with store.session():
        baseline = get_version(store, family, v_a)
        candidate = get_version(store, family, v_b)
        pairs = _pairs(store, baseline, candidate, suites)
    return _gate(baseline, candidate, pairs, tolerance, gating, resamples, confidence, seed)


def _check_gate_args(tolerance: float, resamples: int, confidence: float) -> None:
    if not np.isfinite(tolerance) or tolerance < 0:
        raise BadInput(f"invalid tolerance {tolerance!r}: use a number >= 0 in the metric's units")
    if resamples < 100:
        raise BadInput(f"invalid resamples {resamples!r}: use at least 100")
    if not 0.5 <= confidence < 1:
        raise BadInput(f"invalid confidence {confidence!r}: use a value in [0.5, 1)")


def _pairs(store: Store, baseline: Version, candidate: Version, suites: Sequence[str] | None) -> list[dict]:
    if baseline.eval_step is None or candidate.eval_step is None:
        return []
    return evals.paired_examples(
        store,
        (baseline.run_id, baseline.adapter, baseline.eval_step),
        (candidate.run_id, candidate.adapter, candidate.eval_step),
        suites,
    )


def _gate(baseline, candidate, pairs, tolerance, gating, resamples, confidence, seed) -> GateReport:
    groups: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for pair in pairs:
        groups[(pair["suite"], pair["metric"])].append((float(pair["score_a"]), float(pair["score_b"])))
    rows = []
    for (suite, metric), scores in sorted(groups.items()):
        a, b = np.array(scores).T
        sign = 1.0 if higher_is_better(metric) else -1.0
        deltas = sign * (b - a)
        low, high = paired_bootstrap(deltas, resamples=resamples, confidence=confidence, seed=seed)
        gates = gating is None or metric in gating
        rows.append(
            MetricDelta(suite, metric, len(deltas), float(a.mean()), float(b.mean()), float(deltas.mean()),
                        low, high, sign > 0, gates, gates and high < -tolerance)
        )  # fmt: skip
    verdict = "regression" if any(r.regression for r in rows) else "pass"
    verdict = verdict if rows else "no-evidence"
    return GateReport(
        candidate.family, baseline.version, candidate.version, tolerance, confidence, resamples, tuple(rows), verdict
    )


def _own_evals(candidate: Version, tolerance: float, confidence: float, resamples: int) -> GateReport:
    rows = tuple(
        MetricDelta(s["suite"], s["metric"], int(s["examples"]), None, float(s["mean"]), None, None, None,
                    higher_is_better(s["metric"]), False, False)
        for s in candidate.eval_summary
    )  # fmt: skip
    return GateReport(candidate.family, None, candidate.version, tolerance, confidence, resamples, rows, "first")


# -- alias moves ---------------------------------------------------------------------------
def plan_promote(
    store: Store,
    family: str,
    version: int,
    alias: str,
    *,
    reason: str = "",
    force: bool = False,
    actor: str | None = None,
    tolerance: float = 0.0,
    gating: Sequence[str] | None = None,
    resamples: int = 2000,
    confidence: float = 0.95,
) -> MovePlan:
    """Check a promotion without writing: names, artifact hash, and the gate against the head.
    Raises GateRefused (with .report) on a regression or when no example pairs, unless forced."""
    check_name(family, "family")
    check_name(alias, "alias")
    reason = _check_reason(reason, force)
    _check_gate_args(tolerance, resamples, confidence)
    with store.session():
        candidate = get_version(store, family, version)
        head = alias_head(store, family, alias)
        if head is not None and head.to_version == candidate.version:
            raise BadInput(f"alias {alias!r} of family {family!r} already points at version {candidate.version}")
        baseline = get_version(store, family, head.to_version) if head else None
        pairs = _pairs(store, baseline, candidate, None) if baseline else []
    verify(candidate)
    if baseline is None:
        report = _own_evals(candidate, tolerance, confidence, resamples)
    else:
        report = _gate(baseline, candidate, pairs, tolerance, gating, resamples, confidence, seed=0)
    if not report.passed and not force:
        raise GateRefused(_refusal(report, alias), report)
    verdict = report.verdict if report.passed else f"forced-{report.verdict}"
    return MovePlan(
        family, alias, PROMOTE, candidate.version, head.to_version if head else None, head.seq if head else 0,
        actor_name(store, actor), reason, verdict, report,
    )  # fmt: skip


def promote(
    store: Store,
    family: str,
    version: int,
    alias: str,
    *,
    reason: str = "",
    force: bool = False,
    actor: str | None = None,
    tolerance: float = 0.0,
    gating: Sequence[str] | None = None,
) -> AliasEvent:
    """Gate `version` against the alias's head and move the alias (plan_promote, then apply_move)."""
    plan = plan_promote(
        store, family, version, alias, reason=reason, force=force, actor=actor, tolerance=tolerance, gating=gating
    )
    return apply_move(store, plan)


def plan_rollback(
    store: Store,
    family: str,
    alias: str,
    *,
    to: int | None = None,
    reason: str = "",
    actor: str | None = None,
) -> MovePlan:
    """Move the alias back to the version it held before (repeatable), or to version `to`. Not gated."""
    check_name(family, "family")
    check_name(alias, "alias")
    with store.session():
        events = _alias_events(store, family, alias)
        head = events[-1]
        if to is None:
            stack = _replay(events)
            if len(stack) < 2:
                raise Refused(f"alias {alias!r} of family {family!r} has no earlier version to roll back to")
            target, action = get_version(store, family, stack[-2]), ROLLBACK
        else:
            target, action = get_version(store, family, to), ROLLBACK_TO
            if target.version == head.to_version:
                raise BadInput(f"alias {alias!r} of family {family!r} already points at version {target.version}")
    verify(target)
    return MovePlan(
        family, alias, action, target.version, head.to_version, head.seq, actor_name(store, actor),
        _check_reason(reason, False), "not-gated",
    )  # fmt: skip


def rollback(
    store: Store, family: str, alias: str, *, to: int | None = None, reason: str = "", actor: str | None = None
) -> AliasEvent:
    return apply_move(store, plan_rollback(store, family, alias, to=to, reason=reason, actor=actor))


def apply_move(store: Store, plan: MovePlan) -> AliasEvent:
    """Claim seq expect_seq+1 for the move. If another writer claimed it first, the attempt is
    recorded in registry_conflicts and Conflict is raised; nothing else changes."""
    seq = plan.expect_seq + 1
    event = AliasEvent(
        plan.family, plan.alias, seq, str(uuid.uuid4()), plan.action, plan.from_version, plan.to_version,
        plan.actor, plan.reason, plan.gate_verdict, plan.report.to_dict() if plan.report else {}, datetime.now(UTC),
    )  # fmt: skip
    row = asdict(event) | {"event_id": uuid.UUID(event.event_id), "gate_report": json.dumps(event.gate_report)}
    with store.session():
        store.insert(EVENTS, [[row[c] for c in EVENT_COLUMNS]], EVENT_COLUMNS, dedup_token=_slot(plan, seq))
        winner = _slot_winner(store, plan.family, plan.alias, seq)
        if winner is not None and winner.event_id == event.event_id:
            return event
        store.insert(CONFLICTS, [[row[c] for c in CONFLICT_COLUMNS]], CONFLICT_COLUMNS)
    other = f"{winner.actor} moved it to version {winner.to_version}" if winner else "another writer moved it"
    raise Conflict(
        f"conflict: alias {plan.alias!r} of family {plan.family!r} changed while you were moving it "
        f"({other} at seq {seq}); your move to version {plan.to_version} was not applied - re-run to gate "
        "against the new head"
    )


def _slot(plan: MovePlan, seq: int) -> str:
    return f"alias/{plan.family}/{plan.alias}/{seq}"


def _check_reason(reason: str | None, force: bool) -> str:
    reason = (reason or "").strip()
    if force and not reason:
        raise BadInput("--force needs --reason: say why the gate is overridden")
    return reason


def _refusal(report: GateReport, alias: str) -> str:
    if report.verdict == "no-evidence":
        return (
            f"promotion of {report.family}:{report.candidate} to {alias!r} refused: no eval examples pair it with "
            f"version {report.baseline}; use --force --reason to override"
        )
    worst = ", ".join(
        f"{r.suite}/{r.metric} {r.delta:+.4g} [{r.ci_low:+.4g}, {r.ci_high:+.4g}]" for r in report.regressions
    )
    return (
        f"promotion of {report.family}:{report.candidate} to {alias!r} refused: regression against version "
        f"{report.baseline} on {worst}; use --force --reason to override"
    )


def _replay(events: Sequence[AliasEvent]) -> list[int]:
    """The alias's stack of versions: moves push, a walk-back rollback pops."""
    stack: list[int] = []
    for event in events:
        if event.action == ROLLBACK and len(stack) > 1:
            stack.pop()
        else:
            stack.append(event.to_version)
    return stack


# -- reading aliases -----------------------------------------------------------------------
# The winning event of every slot: the only row, or, should a slot ever hold two, the earliest.
_EVENTS_SQL = f"""
    SELECT * FROM {EVENTS}
    WHERE family = {{family:String}} AND ({{alias:String}} = '' OR alias = {{alias:String}})
      AND ({{at:String}} = '' OR ts <= parseDateTime64BestEffortOrNull({{at:String}}, 6, 'UTC'))
    ORDER BY alias, seq, ts, event_id
    LIMIT 1 BY alias, seq
"""  # noqa: S608


def _events(store: Store, family: str, alias: str = "", at: datetime | None = None) -> list[AliasEvent]:
    params = {"family": family, "alias": alias, "at": at.astimezone(UTC).isoformat() if at else ""}
    return [_event_from_row(r) for r in store.query_rows(_EVENTS_SQL, params)]


def _event_from_row(row: dict) -> AliasEvent:
    return AliasEvent(
        family=row["family"],
        alias=row["alias"],
        seq=int(row["seq"]),
        event_id=str(row["event_id"]),
        action=row["action"],
        from_version=None if row["from_version"] is None else int(row["from_version"]),
        to_version=int(row["to_version"]),
        actor=row["actor"],
        reason=row["reason"],
        gate_verdict=row["gate_verdict"],
        gate_report=json.loads(row["gate_report"] or "{}"),
        ts=_utc(row["ts"]),
    )


def _slot_winner(store: Store, family: str, alias: str, seq: int) -> AliasEvent | None:
    rows = store.query_rows(
        f"SELECT * FROM {EVENTS} WHERE family = {{family:String}} AND alias = {{alias:String}} "  # noqa: S608
        "AND seq = {seq:UInt64} ORDER BY ts, event_id LIMIT 1",
        {"family": family, "alias": alias, "seq": seq},
    )
    return _event_from_row(rows[0]) if rows else None


def _alias_events(store: Store, family: str, alias: str) -> list[AliasEvent]:
    events = _events(store, family, alias)
    if not events:
        _require_family(store, family)
        raise NotFound(f"unknown alias {alias!r} of family {family!r}")
    return events


def _require_family(store: Store, family: str) -> None:
    if _max_version(store, family) == 0:
        raise NotFound(f"unknown family {family!r}")


def _heads(store: Store) -> dict[tuple[str, str], AliasEvent]:
    rows = store.query_rows(
        f"SELECT * FROM {EVENTS} ORDER BY family, alias, seq DESC, ts, event_id LIMIT 1 BY family, alias"  # noqa: S608
    )
    return {(r["family"], r["alias"]): _event_from_row(r) for r in rows}


def alias_head(store: Store, family: str, alias: str) -> AliasEvent | None:
    """The alias's current event (highest seq), or None if it was never set."""
    events = _events(store, family, alias)
    return events[-1] if events else None


def aliases(store: Store, family: str, at: datetime | None = None) -> dict[str, int]:
    """alias -> version for the family, now or at time `at` (aliases not yet set are left out)."""
    check_name(family, "family")
    at = check_at(at)
    with store.session():
        _require_family(store, family)
        events = _events(store, family, at=at)
    heads: dict[str, int] = {}
    for event in events:  # ordered by alias, seq: the last one per alias is its head
        heads[event.alias] = event.to_version
    return heads


def alias_at(store: Store, family: str, alias: str, at: datetime) -> int | None:
    """The version `alias` pointed at at time `at`; None if it had not been set yet."""
    check_name(family, "family")
    check_name(alias, "alias")
    at = check_at(at)
    with store.session():
        _alias_events(store, family, alias)
        events = _events(store, family, alias, at)
    return events[-1].to_version if events else None


def history(store: Store, family: str, alias: str | None = None, at: datetime | None = None) -> list[AliasEvent]:
    """Every alias move of the family (or one alias), oldest first; with `at`, those up to that time."""
    check_name(family, "family")
    if alias is not None:
        check_name(alias, "alias")
    at = check_at(at)
    with store.session():
        if alias is None:
            _require_family(store, family)
        else:
            _alias_events(store, family, alias)
        events = _events(store, family, alias or "", at)
    return sorted(events, key=lambda e: (e.ts, e.alias, e.seq))


def conflicts(store: Store, family: str, alias: str | None = None) -> list[dict]:
    """Losing alias moves: who tried to claim which seq, and when."""
    rows = store.query_rows(
        f"SELECT {', '.join(CONFLICT_COLUMNS)} FROM {CONFLICTS} "  # noqa: S608
        "WHERE family = {family:String} AND ({alias:String} = '' OR alias = {alias:String}) ORDER BY ts",
        {"family": check_name(family, "family"), "alias": alias or ""},
    )
    for row in rows:
        row["event_id"] = str(row["event_id"])
        row["ts"] = _utc(row["ts"])
    return rows


# -- resolving -----------------------------------------------------------------------------
def lookup(store: Store, ref: str) -> Version:
    """'family@alias' (the alias's version now) or 'family:version' -> Version, unverified."""
    if "@" in ref:
        family, alias = ref.split("@", 1)
        check_name(family, "family")
        check_name(alias, "alias")
        with store.session():
            head = _alias_events(store, family, alias)[-1]
            return get_version(store, family, head.to_version)
    if ":" in ref:
        family, number = ref.split(":", 1)
        return get_version(store, check_name(family, "family"), parse_version(number))
    raise BadInput(f"invalid reference {ref!r}: use FAMILY@ALIAS or FAMILY:VERSION")


def resolve(store: Store, ref: str) -> Path:
    """The verified artifact directory of 'family@alias' or 'family:version'."""
    return verify(lookup(store, ref))


# -- small helpers -------------------------------------------------------------------------
def actor_name(store: Store, actor: str | None = None) -> str:
    """--actor, else the OS user; on a server the ClickHouse user is appended."""
    name = (actor or "").strip() or _os_user()
    if not store.url.embedded:
        name = f"{name} (clickhouse user {store.url.username})"
    return name


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return f"uid:{os.getuid()}"


def parse_at(text: str) -> datetime:
    """ISO-8601 time (naive means UTC) -> aware datetime; BadInput if malformed or in the future."""
    try:
        value = datetime.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise BadInput(f"invalid --at {text!r}: use ISO-8601, e.g. 2026-05-01T14:30:00Z") from None
    return check_at(value)


def check_at(at: datetime | None) -> datetime | None:
    if at is None:
        return None
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    if at > datetime.now(UTC):
        raise BadInput(f"invalid --at {at.isoformat()}: it is in the future")
    return at


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
