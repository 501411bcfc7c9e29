"""Run (or resume) a fleet in its own process, appending every step record to a JSONL log.

usage: resume_worker.py SPEC.json RUN_ID LOG.jsonl [--resume] [--kill-at STEP] [--crash-in-step STEP]
With --kill-at, the process SIGKILLs itself while handling that step's record; with --crash-in-step, in the
forward pass of that fleet step, before the step completes (records of unsaved steps are still held then).
"""

import json
import os
import signal
import sys
from pathlib import Path

from lorafleet.trainer import TrainerCallback, run_fleet
from lorafleet.trainer.config import spec_from_dict
from lorafleet.trainer.fleet import Fleet


class StepLog(TrainerCallback):
    def __init__(self, path, kill_at):
        self.path, self.kill_at = path, kill_at

    def on_step(self, record):
        with open(self.path, "a") as fh:
            for a in record.adapters:
                fh.write(json.dumps({"step": record.step, "adapter": a.adapter, "adapter_step": a.step,
                                     "loss": a.loss, "grad_norm": a.grad_norm}) + "\n")  # fmt: skip
        if record.step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def crash_in_step(step: int) -> None:
    forward = Fleet.losses
    calls = []

    def losses(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return forward(self, *args, **kwargs)

    Fleet.losses = losses


def main(argv):
    spec = spec_from_dict(json.loads(Path(argv[0]).read_text()))
    kill_at = int(argv[argv.index("--kill-at") + 1]) if "--kill-at" in argv else -1
    if "--crash-in-step" in argv:
        crash_in_step(int(argv[argv.index("--crash-in-step") + 1]))
    run_fleet(spec, callbacks=[StepLog(argv[2], kill_at)], run_id=argv[1], resume="--resume" in argv)


if __name__ == "__main__":
    main(sys.argv[1:])
