"""One unit of writing: the rows a drained queue turns into, per table, plus its dedup token.

A `Batch` (made by encode.encode) is written as is, or spooled to disk as is (`dump`/`load`)
and written later with the same token, so a retry is dropped by the store's insert
deduplication. This module does not import the trainer (the store child process loads it).
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from operator import itemgetter

import numpy as np
import pyarrow as pa

from lorafleet.store.evals import EVAL_COLUMNS, EvalRow
from lorafleet.store.metrics import ARROW_SCHEMA, arrow_table
from lorafleet.store.runs import AdapterRow, RunRow

# A raw metric row: (run_id, adapter, metric, step, value, ts in microseconds since the epoch).
MetricRow = tuple[str, str, str, int, float, int]

FORMAT_VERSION = 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class RunState:
    """A snapshot of the run's row; `version_us` becomes updated_at so replays cannot regress it."""

    row: RunRow
    version_us: int


@dataclass(frozen=True, slots=True)
class AdapterState:
    row: AdapterRow
    version_us: int


@dataclass(frozen=True, slots=True)
class SpanRows:
    """otel_traces rows (SPAN_COLUMNS order, times in ns) from the span exporter."""

    rows: tuple[tuple, ...]


class FlushMarker:
    """Queued by BatchWriter.flush(): set once the batch it landed in is written or spooled."""

    __slots__ = ("done",)

    def __init__(self):
        self.done = threading.Event()


@dataclass
class Batch:
    token: str
    metrics: pa.Table | None = None
    evals: list[EvalRow] = field(default_factory=list)
    runs: list[RunState] = field(default_factory=list)
    adapters: list[AdapterState] = field(default_factory=list)
    spans: list[tuple] = field(default_factory=list)
    markers: list[FlushMarker] = field(default_factory=list)  # not stored: released after delivery

    @property
    def metric_rows(self) -> int:
        return 0 if self.metrics is None else self.metrics.num_rows

    @property
    def rows(self) -> int:
        return self.metric_rows + len(self.evals) + len(self.runs) + len(self.adapters) + len(self.spans)


def metrics_table(rows: list[tuple]) -> pa.Table:
    # One pass per column (zip(*rows) over a million tuples is several times slower).
    n = len(rows)

    def names(i: int) -> pa.Array:
        return pa.array(list(map(itemgetter(i), rows)), pa.string()).dictionary_encode()

    def numbers(i: int, dtype) -> np.ndarray:
        return np.fromiter(map(itemgetter(i), rows), dtype, n)

    ts = pa.array(numbers(5, np.int64), pa.timestamp("us", tz="UTC"))
    return arrow_table(names(0), names(1), names(2), numbers(3, np.uint64), numbers(4, np.float64), ts)


# -- spool format ----------------------------------------------------------------------------
# One file per batch: a JSON header line (token, small tables) then the metrics as an Arrow IPC
# stream. Times are integers (microseconds; spans keep nanoseconds) so the file is exact.


def dump(batch: Batch) -> bytes:
    header = {
        "format": FORMAT_VERSION,
        "token": batch.token,
        "evals": [[_us(r.ts) if c == "ts" else getattr(r, c) for c in EVAL_COLUMNS] for r in batch.evals],
        "runs": [[_row_json(s.row), s.version_us] for s in batch.runs],
        "adapters": [[_row_json(s.row), s.version_us] for s in batch.adapters],
        "spans": [list(r) for r in batch.spans],
    }
    out = io.BytesIO()
    out.write(json.dumps(header, default=_json_default, allow_nan=True).encode())
    out.write(b"\n")
    if batch.metrics is not None:
        with pa.ipc.new_stream(out, ARROW_SCHEMA) as stream:
            stream.write_table(batch.metrics)
    return out.getvalue()


def load(data: bytes) -> Batch:
    newline = data.index(b"\n")
    header = json.loads(data[:newline])
    if header.get("format") != FORMAT_VERSION:
        raise ValueError(f"spool format {header.get('format')!r} is not {FORMAT_VERSION}")
    rest = data[newline + 1 :]
    metrics = pa.ipc.open_stream(rest).read_all() if rest else None
    evals = [EvalRow(**dict(zip(EVAL_COLUMNS, r, strict=True))) for r in header["evals"]]
    evals = [_replace_ts(e) for e in evals]
    return Batch(
        token=header["token"],
        metrics=metrics,
        evals=evals,
        runs=[RunState(_run_from_json(r), v) for r, v in header["runs"]],
        adapters=[AdapterState(AdapterRow(**r), v) for r, v in header["adapters"]],
        spans=[tuple(r) for r in header["spans"]],
    )


def _us(ts: datetime | None) -> int | None:
    return None if ts is None else (ts - EPOCH) // timedelta(microseconds=1)


def datetime_from_us(us: int | None) -> datetime | None:
    """Microseconds since the epoch -> an aware UTC datetime (the spool and row encoding)."""
    return None if us is None else EPOCH + timedelta(microseconds=us)


def _replace_ts(row: EvalRow) -> EvalRow:
    values = {c: getattr(row, c) for c in EVAL_COLUMNS}
    values["ts"] = datetime_from_us(row.ts)
    return EvalRow(**values)


def _row_json(row) -> dict:
    data = asdict(row)
    for key, value in data.items():
        if isinstance(value, datetime):
            data[key] = {"$us": _us(value)}
    return data


def _run_from_json(data: dict) -> RunRow:
    fixed = {k: datetime_from_us(v["$us"]) if isinstance(v, dict) and "$us" in v else v for k, v in data.items()}
    return RunRow(**fixed)


def _json_default(value):
    return _us(value) if isinstance(value, datetime) else str(value)
