"""Trainer test helpers: tiny specs written as YAML, and a recording callback (a real observer, no mocks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lorafleet.trainer import TrainerCallback


class Recorder(TrainerCallback):
    """Keeps every record it is given, in order."""

    def __init__(self):
        self.events: list[tuple[str, object]] = []

    def _add(self, hook, record):
        self.events.append((hook, record))

    def on_run_start(self, run):
        self._add("run_start", run)

    def on_step(self, record):
        self._add("step", record)

    def on_eval(self, record):
        self._add("eval", record)

    def on_checkpoint(self, record):
        self._add("checkpoint", record)

    def on_fleet_change(self, change):
        self._add("change", change)

    def on_run_end(self, end):
        self._add("run_end", end)

    def of(self, hook: str) -> list:
        return [r for h, r in self.events if h == hook]


@pytest.fixture
def recorder():
    return Recorder()


def adapter(name: str, task: str = "reverse", **kw) -> dict:
    base = dict(name=name, family="fam", train_data=f"task:{task}", rank=4, max_steps=4, batch_size=2,
                train_examples=64, eval_examples=4, eval_every=0, max_seq_len=32)  # fmt: skip
    return {**base, **kw}


def fleet_dict(*adapters: dict, **kw) -> dict:
    return {"name": "t", "threads": 1, "state_every": 0, "device": "cpu", **kw, "adapters": list(adapters)}


def write_spec(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class SpecKit:
    adapter = staticmethod(adapter)
    fleet = staticmethod(fleet_dict)
    write = staticmethod(write_spec)


@pytest.fixture
def kit():
    """Builders: kit.adapter(name, task, **kw), kit.fleet(*adapters, **kw), kit.write(path, data)."""
    return SpecKit
