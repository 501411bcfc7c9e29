"""Changing a running fleet: `lorafleet submit` and `lorafleet stop` drop commands into the run's control queue.

The queue is a directory of JSON files (written atomically); the trainer polls it at step boundaries and
moves each command to control/done/ once the step that applied it is saved, so a resumed run sees it again
only if that step was lost.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from lorafleet import lorafleet_home
from lorafleet.errors import BadInput, NotFound
from lorafleet.names import check_name
from lorafleet.trainer.config import AdapterSpec


def run_dir(run_id: str) -> Path:
    return lorafleet_home() / "runs" / check_name(run_id, "run id")


def read_status(run_id: str) -> dict:
    path = run_dir(run_id) / "status.json"
    if not path.is_file():
        raise NotFound(f"run {run_id!r} not found under {lorafleet_home() / 'runs'}")
    return json.loads(path.read_text())


def _running(run_id: str) -> dict:
    status = read_status(run_id)
    if status["status"] != "running":
        raise BadInput(f"run {run_id!r} is {status['status']}; only a running fleet takes changes")
    return status


def _enqueue(run_id: str, command: dict) -> str:
    queue = run_dir(run_id) / "control"
    queue.mkdir(exist_ok=True)
    command_id = f"{time.time_ns()}-{uuid.uuid4().hex[:6]}"
    tmp = queue / f".{command_id}.tmp"
    tmp.write_text(json.dumps({"id": command_id, **command}))
    os.replace(tmp, queue / f"{command_id}.json")
    return command_id


def submit_adapter(run_id: str, spec: AdapterSpec) -> str:
    """Queue an adapter to join a running fleet at its next step boundary; returns the command id."""
    status = _running(run_id)
    pending = {c["adapter"]["name"] for _, c in pending_commands(run_dir(run_id)) if c["action"] == "submit"}
    if spec.name in status["adapters"] or spec.name in pending:
        raise BadInput(f"name: adapter {spec.name!r} already exists in run {run_id!r}")
    return _enqueue(run_id, {"action": "submit", "adapter": spec.model_dump(mode="json")})


def stop_adapter(run_id: str, adapter: str) -> str:
    """Queue an adapter to leave a running fleet (final checkpoint, then its slot is freed)."""
    status = _running(run_id)
    if adapter not in status["adapters"]:
        raise NotFound(f"adapter {adapter!r} is not in run {run_id!r} (has {sorted(status['adapters'])})")
    if status["adapters"][adapter] != "active":
        raise BadInput(f"adapter {adapter!r} is already {status['adapters'][adapter]}")
    return _enqueue(run_id, {"action": "stop", "adapter": adapter})


def pending_commands(directory: Path) -> list[tuple[Path, dict]]:
    queue = directory / "control"
    if not queue.is_dir():
        return []
    return [(p, json.loads(p.read_text())) for p in sorted(queue.glob("[0-9]*.json"))]


def mark_done(paths: list[Path]) -> None:
    for path in paths:
        done = path.parent / "done"
        done.mkdir(exist_ok=True)
        os.replace(path, done / path.name)
