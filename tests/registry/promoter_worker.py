"""One of two racing promoters (run as a separate OS process by test_concurrency.py).

Each round: read the alias head and plan a promotion in one store session, wait at a file
barrier until the other worker has planned too, then claim in another session. Both therefore
gate against the same head and race for the same seq. Prints one JSON line per round.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from lorafleet.errors import Conflict
from lorafleet.store import open_store
from lorafleet.store import registry as reg


def barrier(directory: Path, round_: int, phase: str, me: int, timeout: float = 60.0) -> None:
    (directory / f"{round_}-{phase}-{me}").touch()
    other = directory / f"{round_}-{phase}-{1 - me}"
    deadline = time.monotonic() + timeout
    while not other.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"worker {me}: barrier {round_}-{phase} timed out")
        time.sleep(0.002)


def main(url: str, family: str, alias: str, me: int, rounds: int, directory: str) -> None:
    store = open_store(url)
    barriers = Path(directory)
    versions = [v.version for v in reg.list_versions(store, family)]
    result = None
    for round_ in range(rounds + 1):
        with store.session():  # session 1: read what the last round left, then read the head and gate
            if result is not None:
                result["seen"] = reg.lookup(store, f"{family}@{alias}").version
                print(json.dumps(result), flush=True)
            if round_ == rounds:
                return
            head = reg.alias_head(store, family, alias).to_version
            others = [v for v in versions if v != head]
            plan = reg.plan_promote(store, family, others[me], alias, actor=f"worker-{me}", reason=f"round {round_}")
        barrier(barriers, round_, "planned", me)
        result = {"round": round_, "worker": me, "to": plan.to_version, "seq": plan.expect_seq + 1}
        try:  # session 2: claim the next seq
            reg.apply_move(store, plan)
            result |= {"won": True, "exit_code": 0, "message": ""}
        except Conflict as exc:
            result |= {"won": False, "exit_code": exc.exit_code, "message": str(exc)}
        barrier(barriers, round_, "applied", me)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
