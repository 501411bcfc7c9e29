"""The embedded engine is shared by OS processes taking turns under the store lock."""

import json
import subprocess
import sys
import textwrap
import time

import pytest

from lorafleet.errors import StoreUnavailable
from lorafleet.store import open_store

WRITER = textwrap.dedent(
    """
    import json, sys, time
    from datetime import UTC, datetime
    from lorafleet.store import open_store, metrics
    store = open_store(sys.argv[1], lock_timeout=30)
    written, errors, batch = 0, [], 0
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        rows = [("run", f"a{i % 4}", "loss", batch * 100 + i, float(i), datetime.now(UTC)) for i in range(100)]
        try:
            metrics.write_points(store, rows)
            written += len(rows)
        except Exception as exc:
            errors.append(repr(exc))
        batch += 1
        time.sleep(0.1)
    print(json.dumps({"written": written, "errors": errors}))
    """
)

READER = textwrap.dedent(
    """
    import json, sys, time
    from lorafleet.store import open_store, metrics
    store = open_store(sys.argv[1], lock_timeout=30)
    queries, errors, last = 0, [], 0
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        try:
            n = store.query("SELECT count() FROM metrics").result_rows[0][0]
            metrics.fleet_latest(store, ["run"])
            if n < last:
                errors.append(f"count went backwards: {last} -> {n}")
            last, queries = n, queries + 1
        except Exception as exc:
            errors.append(repr(exc))
    print(json.dumps({"queries": queries, "errors": errors}))
    """
)

HOLDER = textwrap.dedent(
    """
    import sys, time
    from lorafleet.store import open_store
    store = open_store(sys.argv[1])
    with store.session():
        print("holding", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def _spawn(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_two_processes_share_the_embedded_store_without_errors_or_lost_rows(lorafleet_home):
    url = f"chdb://{lorafleet_home / 'clickhouse'}"
    open_store(url)  # migrate once up front
    writer, reader = _spawn(WRITER, url, "10"), _spawn(READER, url, "10")
    w_out, w_err = writer.communicate(timeout=120)
    r_out, r_err = reader.communicate(timeout=120)
    assert writer.returncode == 0, w_err
    assert reader.returncode == 0, r_err
    wrote, read = json.loads(w_out.strip().splitlines()[-1]), json.loads(r_out.strip().splitlines()[-1])
    assert wrote["errors"] == [] and read["errors"] == []
    # Each turn opens the engine (~40 ms) so the writer manages fewer than 100 batches; both must progress.
    assert wrote["written"] >= 2_000
    assert read["queries"] > 10
    store = open_store(url)
    assert store.query("SELECT count(), uniqExact(step) FROM metrics").result_rows[0] == (
        wrote["written"],
        wrote["written"],
    )


def test_waiting_too_long_for_the_lock_names_the_holder_pid(lorafleet_home):
    url = f"chdb://{lorafleet_home / 'clickhouse'}"
    open_store(url)
    holder = _spawn(HOLDER, url, "5")
    try:
        assert holder.stdout.readline().strip() == "holding"
        store = open_store(url, migrate=False, lock_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=f"pid {holder.pid}"):
            store.query("SELECT 1")
        assert time.monotonic() - started < 3
    finally:
        holder.kill()
        holder.wait()
    assert open_store(url, migrate=False).query("SELECT 1").result_rows == [(1,)]  # the lock died with its holder


def test_sessions_nest_and_reuse_one_open_engine(store):
    with store.session() as outer, store.session() as inner:
        assert outer is inner
        assert store.query("SELECT 1").result_rows == [(1,)]
