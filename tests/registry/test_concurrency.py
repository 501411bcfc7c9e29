"""Two OS processes promoting one alias at the same moment, 50 rounds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lorafleet.store import registry as reg

ROUNDS = 50
WORKER = Path(__file__).with_name("promoter_worker.py")


@pytest.mark.slow
def test_concurrent_promoters_one_winner_per_round_complete_audit(store, store_url, seeder, tmp_path):
    seeder.run("run-1", {"a": 0.8, "b": 0.8, "c": 0.8})
    reg.register_run(store, "run-1")
    reg.promote(store, "support-bot", 1, "production", actor="setup")
    barriers = tmp_path / "barriers"
    barriers.mkdir()
    args = [store_url, "support-bot", "production"]
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), *args, str(me), str(ROUNDS), str(barriers)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in (0, 1)
    ]
    try:
        outputs = [w.communicate(timeout=240) for w in workers]
    finally:
        for worker in workers:  # never leave a worker behind, even when one hangs
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert [w.returncode for w in workers] == [0, 0], [err[-2000:] for _, err in outputs]
    results = [[json.loads(line) for line in out.splitlines()] for out, _ in outputs]
    assert [len(r) for r in results] == [ROUNDS, ROUNDS]

    events = {e.seq: e for e in reg.history(store, "support-bot", "production")}
    lost = {c["seq"]: c for c in reg.conflicts(store, "support-bot", "production")}
    for a, b in zip(*results, strict=True):
        assert a["seq"] == b["seq"], "both workers must race for the same slot"
        winner, loser = (a, b) if a["won"] else (b, a)
        assert winner["won"] and not loser["won"], f"round {a['round']}: exactly one winner"
        assert loser["exit_code"] == 3 and "conflict" in loser["message"]
        assert a["seen"] == b["seen"] == winner["to"], "every reader resolves the alias the same way"
        event = events[winner["seq"]]
        assert (event.to_version, event.actor) == (winner["to"], f"worker-{winner['worker']}")
        assert event.reason == f"round {a['round']}"
        assert (lost[loser["seq"]]["actor"], lost[loser["seq"]]["to_version"]) == (
            f"worker-{loser['worker']}",
            loser["to"],
        )
    assert sorted(events) == list(range(1, ROUNDS + 2)), "no event lost, no slot taken twice"
    assert sorted(lost) == list(range(2, ROUNDS + 2))
    assert reg.lookup(store, "support-bot@production").version == results[0][-1]["seen"]
