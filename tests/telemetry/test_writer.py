"""The batched writer: the store away for a while, a full queue, shutdown, replay, volume."""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time

import pytest

from lorafleet.store import metrics
from lorafleet.telemetry import STEP_METRICS, BatchWriter, Spool, StoreSink, Telemetry, spool_root
from lorafleet.telemetry.batch import dump, load
from lorafleet.telemetry.encode import encode

HOLD_LOCK = """
import sys, time
from lorafleet.store import open_store
store = open_store(sys.argv[1])
with store.session():
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_store_lock(store_url: str, seconds: float) -> subprocess.Popen:
    """Another OS process opens the embedded store and keeps its lock for `seconds`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, store_url, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def embedded_only(store_url: str) -> None:
    if not store_url.startswith("chdb://"):
        pytest.skip("the lock belongs to the embedded store")


def assert_each_signal_once(store, run_id: str, adapter_steps: dict[str, int]) -> None:
    rows = store.query_rows(
        "SELECT adapter, metric, count() AS n, uniqExact(step) AS u FROM metrics "
        "WHERE run_id = {run:String} AND metric NOT LIKE 'eval/%' GROUP BY adapter, metric",
        {"run": run_id},
    )
    got = {(r["adapter"], r["metric"]): (r["n"], r["u"]) for r in rows}
    want = {(a, m): (n, n) for a, n in adapter_steps.items() for m in STEP_METRICS}
    assert got == want


def wait_for(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


@pytest.mark.slow
def test_training_goes_on_while_another_process_holds_the_store_and_nothing_is_lost(fleet, store_url, store):
    embedded_only(store_url)
    tel = Telemetry(store_url, flush_interval_s=0.1, store_lock_timeout_s=0.5)
    fleet.start(tel)
    for s in range(1, 11):
        fleet.step(tel, s)
    assert tel.flush(20)
    holder = hold_store_lock(store_url, 4.0)
    try:
        slowest = 0.0
        for s in range(11, 61):
            t0 = time.perf_counter()
            fleet.step(tel, s)
            slowest = max(slowest, time.perf_counter() - t0)
            time.sleep(0.02)
        assert tel.flush(20)  # written or spooled: with the lock held elsewhere, spooled
        assert tel.writer.stats.spooled_rows > 0
        assert slowest < 0.25, f"a training step waited {slowest:.3f}s on telemetry"
        assert list(tel.writer.spool.directory.glob("*.batch")), "batches wait on disk while the store is away"
    finally:
        holder.wait(timeout=30)
    for s in range(61, 71):
        fleet.step(tel, s)
    fleet.end(tel, 70)
    tel.shutdown(30)
    stats = tel.writer.stats
    assert stats.replayed_rows > 0 and stats.store_errors > 0
    assert not tel.writer.spool.directory.exists(), "the spool is emptied once the store is back"
    assert_each_signal_once(store, fleet.run_id, fleet.adapter_steps)


@pytest.mark.slow
def test_shutdown_with_the_store_away_leaves_a_spool_that_the_next_writer_replays(fleet, store_url, store):
    embedded_only(store_url)
    tel = Telemetry(store_url, flush_interval_s=0.1, store_lock_timeout_s=0.5)
    fleet.start(tel)
    fleet.step(tel, 1)
    assert tel.flush(20)
    holder = hold_store_lock(store_url, 2.5)
    try:
        for s in range(2, 21):
            fleet.step(tel, s)
        fleet.end(tel, 20)
        tel.shutdown(timeout_s=0.5)
        spooled = sorted(spool_root().glob("*/*.batch"))
        assert spooled, "what the store could not take is left on disk"
    finally:
        holder.wait(timeout=30)
    # A later process (here: a later writer) finds the orphaned spool and replays it.
    later = Telemetry(store_url, flush_interval_s=0.1)
    wait_for(lambda: not list(spool_root().glob("*/*.batch")))
    later.shutdown()
    assert_each_signal_once(store, fleet.run_id, fleet.adapter_steps)
    assert store.query_rows("SELECT status FROM runs FINAL")[0]["status"] == "finished"


def test_replaying_a_batch_that_already_landed_adds_nothing(fleet, store_url, store):
    rows = [("r", "a", "loss", step, 1.0 / step, 1_700_000_000_000_000 + step) for step in range(1, 1001)]
    batch = encode(rows, token="replay-test-1")
    sink = StoreSink(store_url)
    sink.export(batch)
    sink.export(load(dump(batch)))  # the spooled copy, written again
    assert metrics.count_points(store, "r", distinct=False) == 1000
    assert metrics.count_points(store, "r") == 1000


def test_a_spooled_batch_reads_back_exactly(fleet, recorder):
    fleet.start(recorder)
    record = fleet.step(recorder, 1)
    eval_record = fleet.eval(recorder, "alpha")
    batch = encode([record, eval_record, ("r", "a", "loss", 3, float("nan"), 5)], token="t-1")
    back = load(dump(batch))
    assert back.token == "t-1" and back.rows == batch.rows == 3 * 6 + 2 + 1 + 2 * len(eval_record.examples)
    assert back.metrics.to_pandas().equals(batch.metrics.to_pandas())  # NaN included
    assert back.evals == batch.evals


def test_a_full_queue_spills_to_disk_instead_of_dropping(store_url, store, lorafleet_home):
    spool = Spool(lorafleet_home / "spool" / "overflow")
    writer = BatchWriter(StoreSink(store_url), spool, max_queue=1000, batch_size=1000, spill_chunk=500)
    for i in range(50_000):
        writer.emit(("r", "a", "loss", i, float(i), 1_700_000_000_000_000 + i))
    writer.shutdown(60)
    assert writer.stats.overflowed > 0, "the queue filled up and spilled"
    assert metrics.count_points(store, "r", distinct=False) == 50_000
    assert metrics.count_points(store, "r") == 50_000


@pytest.mark.slow
def test_a_million_records_at_full_speed_are_stored_once_and_enqueue_stays_in_microseconds(store_url, store):
    n = 1_000_000
    adapters = [f"adapter-{i}" for i in range(8)]
    names = STEP_METRICS
    latencies = [0] * n
    clock = time.perf_counter_ns
    tel = Telemetry(store_url)
    emit = tel.writer.emit
    base_ts = 1_700_000_000_000_000
    for i in range(n):
        row = ("run-1m", adapters[i % 8], names[(i // 8) % 6], i // 48, i * 0.5, base_ts + i)
        t0 = clock()
        emit(row)
        latencies[i] = clock() - t0
    t_emit = time.perf_counter()
    tel.shutdown(180)
    drain_s = time.perf_counter() - t_emit
    p50, p99 = statistics.quantiles(latencies, n=100)[49], statistics.quantiles(latencies, n=100)[98]
    print(f"\nenqueue p50 {p50 / 1000:.2f} us, p99 {p99 / 1000:.2f} us; drain after last emit {drain_s:.1f}s")
    assert tel.writer.stats.spooled_rows == 0
    assert metrics.count_points(store, "run-1m", distinct=False) == n
    assert metrics.count_points(store, "run-1m") == n
    assert p99 < 1_000_000 / 1000, f"enqueue p99 {p99} ns"  # generous: 1 ms


def test_an_unreachable_server_url_spools_instead_of_stopping_training(fleet, store_url, store, lorafleet_home):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    tel = Telemetry(f"http://127.0.0.1:{closed}/default", flush_interval_s=0.05)
    fleet.start(tel)
    for s in range(1, 6):
        fleet.step(tel, s)
    fleet.end(tel, 5)
    tel.shutdown(10)
    assert tel.writer.stats.written_rows == 0 and tel.writer.stats.store_errors > 0
    assert list(spool_root().glob(f"{fleet.run_id}/*.batch")), "everything waits on disk"
    # The spool is plain batches: whichever store a later writer points at receives them, once.
    Telemetry(store_url, flush_interval_s=0.05).shutdown(30)
    assert not list(spool_root().glob("*/*.batch"))
    assert_each_signal_once(store, fleet.run_id, fleet.adapter_steps)


def test_a_killed_store_process_is_restarted_and_nothing_is_lost(fleet, store_url, store):
    tel = Telemetry(store_url, flush_interval_s=0.05)
    fleet.start(tel)
    fleet.step(tel, 1)
    assert tel.flush(20)
    child = tel.writer.sink._proc
    child.kill()  # the store's process dies between two flushes
    child.wait(10)
    for s in range(2, 11):
        fleet.step(tel, s)
    assert tel.flush(20)
    fleet.end(tel, 10)
    tel.shutdown(30)
    assert tel.writer.sink._proc is None, "the restarted child was stopped at shutdown"
    assert_each_signal_once(store, fleet.run_id, fleet.adapter_steps)
